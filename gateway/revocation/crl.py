"""Sans-IO CRL handling: parse, validate against a trust chain, index the revoked serials.

Nothing here does I/O or imports Twisted. The functions run in the CRL worker process
(``gateway.revocation.worker``) so that parsing and verifying a large CRL never holds the
gateway's GIL; the gateway keeps only ``SerialIndex`` (a sorted array of fixed-width serials,
searched by bisection) and ``CrlInfo``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

import attrs
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from gateway.clock import CLOCK_SKEW, utc_timestamp
from gateway.errors import GatewayError

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
        )


class SerialIndex:
    """Revoked serial numbers as one sorted bytes object of fixed-width big-endian entries.

    Memory is ``width`` bytes per entry (at most 21 for RFC 5280's 20-octet serials) plus a
    constant; a lookup is a bisection over ``len`` entries with no allocation per step.
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
        width = max(((v.bit_length() + 7) // 8 for v in values), default=1) or 1
        return cls(width, b"".join(v.to_bytes(width, "big") for v in values))

    def __len__(self) -> int:
        return self.count

    def __contains__(self, serial: object) -> bool:
        if not isinstance(serial, int) or serial < 0:
            return False
        width = self.width
        if serial.bit_length() > width * 8:
            return False
        key = serial.to_bytes(width, "big")
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
    index: SerialIndex


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
    try:
        crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
        raise CrlError("delta_crl", "delta CRLs are not supported")
    except x509.ExtensionNotFound:
        pass
    this_update = utc_timestamp(crl.last_update_utc)
    if this_update > now + skew:
        raise CrlError(
            "not_yet_valid", f"thisUpdate {crl.last_update_utc.isoformat()} is in the future"
        )
    return issuer


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
        validate(crl, trust, now, skew)
        next_update = crl.next_update_utc
        info = CrlInfo(
            issuer=crl.issuer.public_bytes(),
            issuer_text=crl.issuer.rfc4514_string(),
            number=crl_number(crl),
            this_update=utc_timestamp(crl.last_update_utc),
            next_update=None if next_update is None else utc_timestamp(next_update),
            count=len(crl),
            size=len(body),
            sha256=digest,
        )
        out.append(LoadedCrl(info, SerialIndex.from_serials(r.serial_number for r in crl)))
    return out


def distribution_point_urls(cert: x509.Certificate) -> list[str]:
    """http(s) URLs of the certificate's CRL Distribution Points."""
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    urls = []
    for point in points:
        for name in point.full_name or []:
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.lower().startswith(
                ("http://", "https://")
            ):
                urls.append(name.value)
    return urls
