"""Sans-IO CRL handling: parse, validate against a trust chain, index the revoked serials.

Nothing here does I/O or imports Twisted. The functions run in the CRL worker process
(``gateway.revocation.worker``) so that parsing and verifying a large CRL never holds the
gateway's GIL; the gateway keeps only ``SerialIndex`` (a sorted array of fixed-width serials,
searched by bisection) and ``CrlInfo``.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from gateway.clock import CLOCK_SKEW, utc_timestamp
from gateway.revocation.chains import issued_by
from gateway.revocation.der_entries import revoked_serials
from gateway.revocation.held import CrlError as CrlError
from gateway.revocation.held import CrlInfo as CrlInfo
from gateway.revocation.held import LoadedCrl as LoadedCrl
from gateway.revocation.held import SerialIndex as SerialIndex
from gateway.revocation.held import decode_answer as decode_answer
from gateway.revocation.held import describe_loaded as describe_loaded
from gateway.revocation.held import loaded_blobs as loaded_blobs
from gateway.revocation.scope import CrlScope, crl_scope

_BEGIN, _END = b"-----BEGIN X509 CRL-----", b"-----END X509 CRL-----"
_BASE64 = re.compile(rb"[A-Za-z0-9+/=\s]*")


def _pem_blocks(data: bytes) -> list[bytes]:
    """The base64 text of each ``X509 CRL`` block (other blocks skipped): found with
    ``bytes.find`` (a regular expression over 47 MB took half a second), each checked to
    hold only base64 and white space (decoded once, as DER, by the caller)."""
    blocks, at = [], 0
    while (begin := data.find(_BEGIN, at)) >= 0:
        end = data.find(_END, begin)
        if end < 0:
            raise CrlError("garbage", "an 'X509 CRL' block without its END line")
        block = data[begin + len(_BEGIN) : end]
        if _BASE64.fullmatch(block) is None:
            raise CrlError("garbage", "an 'X509 CRL' block that is not base64")
        blocks.append(block)
        at = end + len(_END)
    return blocks


def parse_bundle(data: bytes) -> list[tuple[x509.CertificateRevocationList, bytes]]:
    """One DER CRL, or one or more PEM CRLs, each with its DER. Raises CrlError('garbage')
    otherwise."""
    if not data:
        raise CrlError("garbage", "empty body")
    try:
        if data.lstrip()[:5] == b"-----":
            ders = [binascii.a2b_base64(block) for block in _pem_blocks(data)]
            if not ders:
                raise CrlError("garbage", "PEM without an 'X509 CRL' block")
            return [(x509.load_der_x509_crl(der), der) for der in ders]
        return [(x509.load_der_x509_crl(data), data)]
    except (ValueError, binascii.Error) as e:
        raise CrlError("garbage", f"not a CRL ({e})") from None


def _signature_valid(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    key = issuer.public_key()
    if not isinstance(
        key,
        (
            rsa.RSAPublicKey,
            ec.EllipticCurvePublicKey,
            dsa.DSAPublicKey,
            ed25519.Ed25519PublicKey,
            ed448.Ed448PublicKey,
        ),
    ):
        return False
    try:
        return crl.is_signature_valid(key)
    except Exception:
        return False


def validate(
    crl: x509.CertificateRevocationList,
    trust: Sequence[x509.Certificate],
    now: float,
    skew: float = CLOCK_SKEW,
) -> x509.Certificate:
    """Check a CRL against the trust chain; return the issuing certificate or raise CrlError."""
    candidates = [c for c in trust if c.subject == crl.issuer]
    if not candidates:
        raise CrlError(
            "unknown_issuer", f"issuer {crl.issuer.rfc4514_string()} is not in the trust chain"
        )
    issuer = next((c for c in candidates if _signature_valid(crl, c)), None)
    if issuer is None:
        raise CrlError(
            "bad_signature", f"signature does not verify with {crl.issuer.rfc4514_string()}"
        )
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.crl_sign:
            raise CrlError(
                "not_crl_signer", f"{crl.issuer.rfc4514_string()} lacks the cRLSign key usage"
            )
    except x509.ExtensionNotFound:
        pass
    _check_extensions(crl)
    this_update = utc_timestamp(crl.last_update_utc)
    if this_update > now + skew:
        raise CrlError(
            "not_yet_valid", f"thisUpdate {crl.last_update_utc.isoformat()} is in the future"
        )
    return issuer


_MAX_SIGNER_PATH = 16  # certificates from a CRL signer up to its trust anchor


def signer_path(
    signer: x509.Certificate, trust: Sequence[x509.Certificate], now: float, skew: float
) -> list[x509.Certificate]:
    """The CRL signer's certification path up to a self-signed anchor of the trust chain,
    each link's signature checked and each certificate valid now (RFC 5280 §6.3.3 (f));
    raise CrlError otherwise."""
    path = [signer]
    cert = signer
    while cert.issuer != cert.subject:
        if len(path) > _MAX_SIGNER_PATH:
            raise CrlError("untrusted_signer", "CRL signer path too long")
        parent = next(
            (c for c in trust if c.subject == cert.issuer and c is not cert and issued_by(cert, c)),
            None,
        )
        if parent is None:
            raise CrlError(
                "untrusted_signer",
                f"CRL signer {signer.subject.rfc4514_string()} does not chain to a trust "
                "anchor of cacertfile",
            )
        path.append(parent)
        cert = parent
    for link in path:
        start = utc_timestamp(link.not_valid_before_utc)
        end = utc_timestamp(link.not_valid_after_utc)
        if not start - skew <= now <= end + skew:
            raise CrlError(
                "signer_expired",
                f"CRL signer path certificate {link.subject.rfc4514_string()} is not valid now",
            )
    return path


# CRL extensions this gateway interprets or may safely ignore (RFC 5280 §5.2). A critical
# extension outside this list makes the CRL unusable (§5.2: "MUST NOT use the CRL").
_CRL_EXTENSIONS = (
    x509.DeltaCRLIndicator,
    x509.AuthorityKeyIdentifier,
    x509.IssuerAlternativeName,
    x509.CRLNumber,
    x509.IssuingDistributionPoint,
    x509.FreshestCRL,
    x509.AuthorityInformationAccess,
)
_ENTRY_EXTENSIONS = (x509.CRLReason, x509.InvalidityDate, x509.CertificateIssuer)


def _check_extensions(crl: x509.CertificateRevocationList) -> None:
    """Refuse what this gateway cannot interpret in the CRL's own extensions: unknown
    critical ones, a delta CRL without a number (RFC 5280 §5.2, §5.2.4)."""
    name = crl.issuer.rfc4514_string()
    try:
        extensions = crl.extensions
    except ValueError as e:
        raise CrlError("garbage", f"CRL of {name}: unparsable extensions ({e})") from None
    for ext in extensions:
        if isinstance(ext.value, x509.DeltaCRLIndicator) and crl_number(crl) is None:
            raise CrlError("delta_crl", f"delta CRL of {name} has no CRL number")
        if ext.critical and not isinstance(ext.value, _CRL_EXTENSIONS):
            raise CrlError(
                "unknown_critical_extension",
                f"CRL of {name} has a critical extension {ext.oid.dotted_string} this gateway "
                "does not interpret; it must not be used",
            )


def _check_entry_extensions(crl: x509.CertificateRevocationList) -> None:
    """Refuse entries this gateway cannot interpret: unknown critical extensions,
    certificateIssuer outside an indirect CRL (RFC 5280 §5.3, §5.3.3)."""
    name = crl.issuer.rfc4514_string()
    indirect = crl_scope_of(crl).indirect
    for entry in crl:
        try:
            entry_extensions = entry.extensions
        except ValueError as e:
            raise CrlError("garbage", f"CRL of {name}: unparsable entry ({e})") from None
        for ext in entry_extensions:
            if isinstance(ext.value, x509.CertificateIssuer) and not indirect:
                raise CrlError(
                    "garbage", f"CRL of {name} has certificateIssuer entries but is not indirect"
                )
            if ext.critical and not isinstance(ext.value, _ENTRY_EXTENSIONS):
                raise CrlError(
                    "unknown_critical_extension",
                    f"CRL of {name}: an entry has a critical extension "
                    f"{ext.oid.dotted_string} this gateway does not interpret",
                )


def crl_scope_of(crl: x509.CertificateRevocationList) -> CrlScope:
    try:
        idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    except x509.ExtensionNotFound:
        idp = None
    return crl_scope(idp, crl.issuer)


def crl_number(crl: x509.CertificateRevocationList) -> int | None:
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return None


def load(
    body: bytes, trust: Sequence[x509.Certificate], now: float, skew: float = CLOCK_SKEW
) -> list[LoadedCrl]:
    """Parse, validate and index every CRL in a body; all or nothing."""
    digest = hashlib.sha256(body).hexdigest()
    out = []
    for crl, der in parse_bundle(body):
        signer = validate(crl, trust, now, skew)
        path = signer_path(signer, trust, now, skew)
        next_update = crl.next_update_utc
        extensions = crl.extensions
        try:
            base: int | None = extensions.get_extension_for_class(
                x509.DeltaCRLIndicator
            ).value.crl_number
        except x509.ExtensionNotFound:
            base = None
        scope = crl_scope_of(crl)
        # A complete CRL's entries read from its DER (verified above) when they are plain;
        # anything else through cryptography, whose checks name what is wrong.
        serials = revoked_serials(der) if base is None and not scope.indirect else None
        if serials is None:
            _check_entry_extensions(crl)
        info = CrlInfo(
            issuer=crl.issuer.public_bytes(),
            issuer_text=crl.issuer.rfc4514_string(),
            number=crl_number(crl),
            this_update=utc_timestamp(crl.last_update_utc),
            next_update=None if next_update is None else utc_timestamp(next_update),
            count=len(serials) if serials is not None else len(crl),
            size=len(body),
            sha256=digest,
            scope=scope,
            signer=tuple((c.issuer.public_bytes(), c.serial_number) for c in path[:-1]),
            delta_base=base,
            freshest=_freshest_urls(extensions),
        )
        if info.scope.indirect:
            out.append(_indirect(crl, info))
            continue
        if base is None:
            if serials is None:
                serials = [r.serial_number for r in crl]
            out.append(LoadedCrl(info, SerialIndex.from_serials(serials)))
            continue
        revoked: list[int] = []
        removed: list[int] = []
        for entry in crl:
            (removed if _reason(entry) == x509.ReasonFlags.remove_from_crl else revoked).append(
                entry.serial_number
            )
        out.append(
            LoadedCrl(info, SerialIndex.from_serials(revoked), SerialIndex.from_serials(removed))
        )
    return out


def _indirect(crl: x509.CertificateRevocationList, info: CrlInfo) -> LoadedCrl:
    """Split an indirect CRL's entries by certificate issuer: each certificateIssuer entry
    extension names the issuer of it and of the entries after it (RFC 5280 §5.3.3); before
    the first, the CRL's own issuer."""
    by_issuer: dict[bytes, list[int]] = {}
    current = info.issuer
    for entry in crl:
        try:
            names = entry.extensions.get_extension_for_class(x509.CertificateIssuer).value
        except x509.ExtensionNotFound:
            names = None
        if names is not None:
            directory = names.get_values_for_type(x509.DirectoryName)
            if not directory:
                raise CrlError(
                    "garbage", f"CRL of {info.issuer_text}: certificateIssuer without a name"
                )
            current = directory[0].public_bytes()
        by_issuer.setdefault(current, []).append(entry.serial_number)
    own = SerialIndex.from_serials(by_issuer.pop(info.issuer, []))
    sections = {issuer: SerialIndex.from_serials(s) for issuer, s in by_issuer.items()}
    return LoadedCrl(info, own, sections=sections)


def _reason(entry: x509.RevokedCertificate) -> x509.ReasonFlags | None:
    try:
        return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return None


def _http_urls(points: Iterable[x509.DistributionPoint]) -> list[str]:
    urls = []
    for point in points:
        for name in point.full_name or []:
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.lower().startswith(
                ("http://", "https://")
            ):
                urls.append(name.value)
    return urls


def _freshest_urls(extensions: x509.Extensions) -> tuple[str, ...]:
    try:
        return tuple(_http_urls(extensions.get_extension_for_class(x509.FreshestCRL).value))
    except x509.ExtensionNotFound:
        return ()


def freshest_urls(cert: x509.Certificate) -> list[str]:
    """http(s) URLs of the certificate's FreshestCRL (its delta CRLs)."""
    try:
        return list(_freshest_urls(cert.extensions))
    except ValueError:
        return []


def distribution_point_urls(cert: x509.Certificate) -> list[str]:
    """http(s) URLs of the certificate's CRL Distribution Points."""
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    return _http_urls(points)
