"""Sans-IO CRL handling: parse, validate against a trust chain, index the revoked serials.

Nothing here does I/O or imports Twisted. The functions run in the CRL worker process
(``gateway.revocation.worker``) so that parsing and verifying a large CRL never holds the
gateway's GIL; the gateway keeps only ``SerialIndex`` (a sorted array of fixed-width serials,
searched by bisection) and ``CrlInfo``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from gateway.clock import CLOCK_SKEW, utc_timestamp
from gateway.errors import GatewayError
from gateway.revocation.chains import issued_by
from gateway.revocation.scope import CrlScope, crl_scope

_PEM_CRL = re.compile(
    rb"-----BEGIN X509 CRL-----\s+([A-Za-z0-9+/=\s]+?)-----END X509 CRL-----", re.S
)


class CrlError(GatewayError):
    """A CRL that must not be used. ``kind`` is a short machine-readable class."""


@attrs.frozen
class CrlInfo:
    """What the gateway knows about one validated CRL."""

    issuer: bytes  # DER of the issuer Name: the lookup key
    issuer_text: str
    number: int | None
    this_update: float  # POSIX seconds
    next_update: float | None
    count: int
    size: int  # bytes of the body it came in
    sha256: str  # of that body
    scope: CrlScope = CrlScope()  # what its issuing distribution point limits it to
    # (issuer DER, serial) of each certificate of the signer's path below its trust anchor:
    # the CRL is usable only while none of them is revoked (RFC 5280 §6.3.3 (f)).
    signer: tuple[tuple[bytes, int], ...] = ()
    delta_base: int | None = None  # a delta CRL: the number of the base CRL it completes
    freshest: tuple[str, ...] = ()  # http(s) URLs of its delta CRLs (FreshestCRL)

    def expired(self, now: float, grace: float = 0.0) -> bool:
        return self.next_update is not None and now > self.next_update + grace

    def compare(self, other: CrlInfo | None) -> str:
        """'newer', 'same' or 'older' than ``other`` (CRL number, else thisUpdate)."""
        if other is None:
            return "newer"
        if self.number is not None and other.number is not None:
            mine, theirs = self.number, other.number
        else:
            mine, theirs = self.this_update, other.this_update  # type: ignore[assignment]
        if mine > theirs:
            return "newer"
        return "same" if mine == theirs else "older"

    def to_json(self) -> dict[str, object]:
        return {
            "issuer": self.issuer.hex(),
            "issuer_text": self.issuer_text,
            "number": self.number,
            "this_update": self.this_update,
            "next_update": self.next_update,
            "count": self.count,
            "size": self.size,
            "sha256": self.sha256,
            "scope": None if self.scope.complete else self.scope.to_json(),
            "signer": [[issuer.hex(), serial] for issuer, serial in self.signer],
            "delta_base": self.delta_base,
            "freshest": list(self.freshest),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> CrlInfo:
        return cls(
            issuer=bytes.fromhex(str(data["issuer"])),
            issuer_text=str(data["issuer_text"]),
            number=None if data["number"] is None else int(data["number"]),  # type: ignore[call-overload]
            this_update=float(data["this_update"]),  # type: ignore[arg-type]
            next_update=None if data["next_update"] is None else float(data["next_update"]),  # type: ignore[arg-type]
            count=int(data["count"]),  # type: ignore[call-overload]
            size=int(data["size"]),  # type: ignore[call-overload]
            sha256=str(data["sha256"]),
            scope=CrlScope.from_json(data.get("scope")),  # type: ignore[arg-type]
            signer=tuple(
                (bytes.fromhex(str(i)), int(s))
                for i, s in data.get("signer", ())  # type: ignore[attr-defined]
            ),
            delta_base=None if data.get("delta_base") is None else int(data["delta_base"]),  # type: ignore[call-overload]
            freshest=tuple(map(str, data.get("freshest", ()))),  # type: ignore[call-overload]
        )


class SerialIndex:
    """Revoked serial numbers as one sorted bytes object of fixed-width big-endian entries.

    Each entry is the serial plus 2**(8*width - 1) (offset binary), so negative serials (old
    CAs issued them) and serials longer than RFC 5280's 20 octets are stored and matched
    exactly, and byte order is numeric order. Memory is ``width`` bytes per entry (20 for
    RFC 5280's largest serials) plus a constant; a lookup is a bisection over ``len`` entries
    with no allocation per step.
    """

    __slots__ = ("blob", "count", "offset", "width")

    def __init__(
        self, width: int, blob: bytes | bytearray, offset: int = 0, count: int | None = None
    ) -> None:
        """``blob[offset:offset + count * width]`` holds the entries (shared, not copied)."""
        if count is None:
            count, rest = divmod(len(blob) - offset, width) if width > 0 else (0, 1)
            if rest:
                raise ValueError("index blob is not a whole number of entries")
        if width <= 0 or offset + count * width > len(blob):
            raise ValueError("index blob is shorter than its entries")
        self.width = width
        self.blob = blob
        self.offset = offset
        self.count = count

    @property
    def nbytes(self) -> int:
        return self.count * self.width

    def entries(self) -> bytes:
        return bytes(self.blob[self.offset : self.offset + self.nbytes])

    @classmethod
    def from_serials(cls, serials: Iterable[int]) -> SerialIndex:
        values = sorted(set(serials))
        bits = max((v.bit_length() for v in values), default=0) + 1  # one for the sign
        width = (bits + 7) // 8
        half = 1 << (8 * width - 1)
        return cls(width, b"".join((v + half).to_bytes(width, "big") for v in values))

    def __len__(self) -> int:
        return self.count

    def __contains__(self, serial: object) -> bool:
        if not isinstance(serial, int):
            return False
        width = self.width
        half = 1 << (8 * width - 1)
        if not -half <= serial < half:
            return False
        key = (serial + half).to_bytes(width, "big")
        blob = self.blob
        base = self.offset
        lo, hi = 0, self.count
        while lo < hi:
            mid = (lo + hi) // 2
            start = base + mid * width
            entry = blob[start : start + width]
            if entry < key:
                lo = mid + 1
            elif entry > key:
                hi = mid
            else:
                return True
        return False


@attrs.frozen
class LoadedCrl:
    info: CrlInfo
    index: SerialIndex  # the serials it revokes
    # A delta CRL's removeFromCRL entries: serials its base lists that are no longer revoked
    # (a certificateHold released).
    removed: SerialIndex | None = None
    # An indirect CRL's entries for other certificate issuers (certificateIssuer): issuer
    # DER -> index. ``index`` holds those of the CRL's own issuer.
    sections: dict[bytes, SerialIndex] | None = None


def describe_loaded(crl: LoadedCrl) -> dict[str, Any]:
    """The JSON item that introduces a LoadedCrl's blobs (``loaded_blobs``, in that order) in
    the CRL worker's answer and in a worker snapshot; ``process.decode_answer`` reads it."""
    return dict(
        crl.info.to_json(),
        width=crl.index.width,
        blob_len=crl.index.nbytes,
        removed_width=crl.removed.width if crl.removed is not None else 0,
        removed_len=crl.removed.nbytes if crl.removed is not None else 0,
        sections=[
            [issuer.hex(), index.width, index.nbytes]
            for issuer, index in (crl.sections or {}).items()
        ],
    )


def loaded_blobs(crl: LoadedCrl) -> list[memoryview]:
    """The entries of each index of ``crl``, as views into their buffers (no copy)."""
    indexes = [crl.index]
    if crl.removed is not None:
        indexes.append(crl.removed)
    indexes.extend((crl.sections or {}).values())
    return [memoryview(i.blob)[i.offset : i.offset + i.nbytes] for i in indexes]


def decode_answer(data: bytes | bytearray) -> list[LoadedCrl]:
    """Parse the worker's stdout: a JSON line, then the index blobs. Raises CrlError.

    The indexes refer to ``data`` in place (no copy: a 1,000,000-entry index is 16 MB, and
    copying it on the reactor thread is a stall every connection feels).
    """
    end = data.find(b"\n")
    if end < 0:
        raise CrlError("worker_error", "no answer from the CRL worker")
    answer = json.loads(bytes(data[:end]))
    if not answer.get("ok"):
        raise CrlError(str(answer.get("kind")), str(answer.get("detail")))
    out = []
    pos = end + 1
    for item in answer["crls"]:
        index, pos = _index_at(data, pos, int(item["width"]), int(item["blob_len"]))
        removed = None
        if item.get("removed_width"):
            removed, pos = _index_at(
                data, pos, int(item["removed_width"]), int(item["removed_len"])
            )
        sections = {}
        for issuer_hex, width, size in item.get("sections", []):
            sections[bytes.fromhex(issuer_hex)], pos = _index_at(data, pos, int(width), int(size))
        out.append(LoadedCrl(CrlInfo.from_json(item), index, removed, sections or None))
    if pos != len(data):
        raise CrlError("worker_error", "CRL worker answer has trailing bytes")
    return out


def _index_at(data: bytes | bytearray, pos: int, width: int, size: int) -> tuple[SerialIndex, int]:
    if width <= 0 or size < 0 or size % width or pos + size > len(data):
        raise CrlError("worker_error", "CRL worker answer is malformed")
    return SerialIndex(width, data, pos, size // width), pos + size


def parse_bundle(data: bytes) -> list[x509.CertificateRevocationList]:
    """One DER CRL, or one or more PEM CRLs. Raises CrlError('garbage') otherwise."""
    if not data:
        raise CrlError("garbage", "empty body")
    try:
        if data.lstrip()[:5] == b"-----":
            blocks = _PEM_CRL.findall(data)
            if not blocks:
                raise CrlError("garbage", "PEM without an 'X509 CRL' block")
            return [
                x509.load_pem_x509_crl(
                    b"-----BEGIN X509 CRL-----\n" + block + b"-----END X509 CRL-----\n"
                )
                for block in blocks
            ]
        return [x509.load_der_x509_crl(data)]
    except ValueError as e:
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
    """Refuse what this gateway cannot interpret: unknown critical extensions of the CRL or
    of an entry, a delta CRL without a number, certificateIssuer entries outside an
    indirect CRL (RFC 5280 §5.2, §5.2.4, §5.3.3)."""
    name = crl.issuer.rfc4514_string()
    indirect = crl_scope_of(crl).indirect
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
    for crl in parse_bundle(body):
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
        info = CrlInfo(
            issuer=crl.issuer.public_bytes(),
            issuer_text=crl.issuer.rfc4514_string(),
            number=crl_number(crl),
            this_update=utc_timestamp(crl.last_update_utc),
            next_update=None if next_update is None else utc_timestamp(next_update),
            count=len(crl),
            size=len(body),
            sha256=digest,
            scope=crl_scope_of(crl),
            signer=tuple((c.issuer.public_bytes(), c.serial_number) for c in path[:-1]),
            delta_base=base,
            freshest=_freshest_urls(extensions),
        )
        if info.scope.indirect:
            out.append(_indirect(crl, info))
            continue
        if base is None:
            out.append(LoadedCrl(info, SerialIndex.from_serials(r.serial_number for r in crl)))
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
