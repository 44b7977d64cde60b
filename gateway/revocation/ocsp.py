"""Sans-IO OCSP: build requests, validate answers; for stapling the gateway's own
certificate and for checking client certificates (``validate(..., for_client=...)``).

No I/O, no Twisted. A response is accepted only if (as HAProxy checks, and unlike EMQX, which
staples any HTTP 200 body): its status is successful; it holds a SingleResponse for our
certificate (serial, issuer name hash and issuer key hash, computed with the response's own
hash algorithm); it is signed by the issuer, or by a delegated responder certificate issued
directly by the issuer with the OCSPSigning extended key usage and currently valid; its
thisUpdate is not in the future (small skew allowed); its nextUpdate is present and in the
future; and, when we sent a nonce, it echoes it. 'unknown' is never accepted for stapling.
"""

from __future__ import annotations

import base64
import datetime
import os
import urllib.parse
from collections.abc import Sequence

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from gateway.clock import CLOCK_SKEW, utc_timestamp
from gateway.errors import GatewayError
from gateway.reasons import OcspVerdict

MAX_RESPONSE_SIZE = 64 * 1024  # real responses are a few KB; more is not an OCSP answer


class OcspError(GatewayError):
    """A response that must not be stapled. ``kind`` is a short machine-readable class."""


@attrs.frozen
class OcspTarget:
    """What stapling asks the responder about: our certificate, its issuer, the URL."""

    cert: x509.Certificate
    issuer: x509.Certificate
    responder: str


@attrs.frozen
class OcspInfo:
    """A validated response, ready to staple."""

    der: bytes
    status: OcspVerdict  # good, revoked, unknown (unknown: client checking only)
    produced_at: float
    this_update: float
    next_update: float
    revocation_time: float | None = None
    revocation_reason: str | None = None


def _ts(value: datetime.datetime | None) -> float | None:
    return None if value is None else utc_timestamp(value)


def responder_url_of(cert: x509.Certificate) -> str | None:
    """The OCSP URL of the Authority Information Access extension, if any."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    for desc in aia:
        if desc.access_method == AuthorityInformationAccessOID.OCSP and isinstance(
            desc.access_location, x509.UniformResourceIdentifier
        ):
            return desc.access_location.value
    return None


def find_issuer(
    cert: x509.Certificate, candidates: Sequence[x509.Certificate]
) -> x509.Certificate | None:
    """The candidate whose subject is cert's issuer and whose key verifies cert's signature."""
    for candidate in candidates:
        if candidate.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return candidate
    return None


def issuer_candidates(
    chain: Sequence[x509.Certificate],
    issuer_pem: Sequence[x509.Certificate] | None,
    cacerts: Sequence[x509.Certificate] | None,
) -> list[x509.Certificate]:
    """Where the issuer of chain[0] is looked for: ocsp_issuer_pem if set, else the rest of
    certfile's chain, then cacertfile."""
    if issuer_pem is not None:
        return list(issuer_pem)
    return list(chain[1:]) + list(cacerts or [])


def issuer_hashes(issuer: x509.Certificate, algorithm: hashes.HashAlgorithm) -> tuple[bytes, bytes]:
    """CertID's issuerNameHash and issuerKeyHash of ``issuer`` with ``algorithm``: the hash
    of its subject's DER and of its subjectPublicKey BIT STRING's content (RFC 6960 4.1.1)."""
    spki = issuer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey
    # BIT STRING }: past the outer header and the algorithm, the bit string's content after
    # its unused-bits octet.
    i = _der_content(spki, 0)
    i = _der_next(spki, i)
    key_bits = spki[_der_content(spki, i) + 1 :]
    out = []
    for data in (issuer.subject.public_bytes(), key_bits):
        h = hashes.Hash(algorithm)
        h.update(data)
        out.append(h.finalize())
    return out[0], out[1]


def _der_content(der: bytes, i: int) -> int:
    """Where the content of the DER element at ``i`` starts."""
    n = der[i + 1]
    return i + 2 + (n & 0x7F if n & 0x80 else 0)


def _der_next(der: bytes, i: int) -> int:
    """Where the DER element after the one at ``i`` starts."""
    n = der[i + 1]
    if n & 0x80:
        size = n & 0x7F
        return i + 2 + size + int.from_bytes(der[i + 2 : i + 2 + size], "big")
    return i + 2 + n


def new_nonce() -> bytes:
    return os.urandom(16)


def build_request(
    cert: x509.Certificate, issuer: x509.Certificate, nonce: bytes | None = None
) -> bytes:
    """DER OCSP request for one certificate; SHA-1 CertID, as responders expect."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def get_url(responder: str, request: bytes) -> str:
    """The GET form of RFC 6960 appendix A.1: the URL-encoded base64 request after a '/'."""
    encoded = urllib.parse.quote(base64.b64encode(request).decode("ascii"), safe="")
    return responder.rstrip("/") + "/" + encoded


def _verify_signature(
    key: object, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm | None
) -> bool:
    try:
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            key.verify(signature, data)
        else:
            return False
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _signed_by(response: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    return _verify_signature(
        cert.public_key(),
        response.signature,
        response.tbs_response_bytes,
        response.signature_hash_algorithm,
    )


def _authorised_delegate(
    response: ocsp.OCSPResponse, issuer: x509.Certificate, now: float
) -> tuple[x509.Certificate | None, str]:
    """A certificate in the response that may sign for the issuer, and why others may not."""
    why = "signed neither by the issuer nor by a certificate in the response"
    for cert in response.certificates:
        if not _signed_by(response, cert):
            continue
        if find_issuer(cert, [issuer]) is None:
            why = f"signed by {cert.subject.rfc4514_string()}, which the issuer did not issue"
            continue
        try:
            usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usage = None
        if usage is None or ExtendedKeyUsageOID.OCSP_SIGNING not in usage:
            why = f"signed by {cert.subject.rfc4514_string()}, which lacks the OCSPSigning usage"
            continue
        start, end = _ts(cert.not_valid_before_utc), _ts(cert.not_valid_after_utc)
        if not (start is not None and end is not None and start - CLOCK_SKEW <= now <= end):
            why = f"signed by {cert.subject.rfc4514_string()}, which is not currently valid"
            continue
        return cert, ""
    return None, why


def validate(
    der: bytes,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    now: float,
    nonce: bytes | None = None,
    skew: float = CLOCK_SKEW,
    max_age: float | None = None,
) -> OcspInfo:
    """Check a DER OCSP response for ``cert``; return what it says or raise OcspError."""
    return validate_serial(der, cert.serial_number, issuer, now, nonce, skew, max_age)


def validate_serial(
    der: bytes,
    serial: int,
    issuer: x509.Certificate,
    now: float,
    nonce: bytes | None = None,
    skew: float = CLOCK_SKEW,
    max_age: float | None = None,
) -> OcspInfo:
    """Check a DER OCSP response for the certificate ``serial`` of ``issuer``; return what
    it says or raise OcspError.

    Stapling (``max_age`` None): nextUpdate is required and 'unknown' refused. Checking a
    client certificate (``max_age`` set): an answer without nextUpdate is used until
    thisUpdate + ``max_age``, and 'unknown' is returned for the policy to decide."""
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError as e:
        raise OcspError("garbage", f"not an OCSP response ({e})") from None
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OcspError("unsuccessful", f"responseStatus {response.response_status.name.lower()}")
    mine = None
    for single in response.responses:
        if single.serial_number != serial:
            continue
        if (single.issuer_name_hash, single.issuer_key_hash) == issuer_hashes(
            issuer, single.hash_algorithm
        ):
            mine = single
            break
    if mine is None:
        raise OcspError("wrong_certificate", f"no answer for serial {serial:X} of its issuer")
    if not _signed_by(response, issuer):
        delegate, why = _authorised_delegate(response, issuer, now)
        if delegate is None:
            raise OcspError("bad_signer", why)
    this_update = _ts(mine.this_update_utc)
    next_update = _ts(mine.next_update_utc)
    assert this_update is not None
    if this_update > now + skew:
        raise OcspError(
            "not_yet_valid", f"thisUpdate {mine.this_update_utc.isoformat()} is in the future"
        )
    if next_update is None:
        if max_age is None:
            raise OcspError("no_next_update", "the response has no nextUpdate")
        next_update = this_update + max_age
    if next_update <= now:
        when = datetime.datetime.fromtimestamp(next_update, datetime.timezone.utc).isoformat()
        raise OcspError("expired", f"nextUpdate {when} has passed")
    if nonce is not None:
        try:
            echoed = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        except x509.ExtensionNotFound:
            echoed = None
        if echoed != nonce:
            raise OcspError("bad_nonce", "the response does not echo our nonce")
    status = mine.certificate_status
    produced = _ts(response.produced_at_utc)
    assert produced is not None
    if status == ocsp.OCSPCertStatus.UNKNOWN:
        if max_age is None:
            raise OcspError("unknown_status", "the responder does not know our certificate")
        return OcspInfo(der, OcspVerdict.UNKNOWN, produced, this_update, next_update)
    if status == ocsp.OCSPCertStatus.REVOKED:
        reason = mine.revocation_reason
        return OcspInfo(
            der,
            OcspVerdict.REVOKED,
            produced,
            this_update,
            next_update,
            _ts(mine.revocation_time_utc),
            reason.name if reason else None,
        )
    return OcspInfo(der, OcspVerdict.GOOD, produced, this_update, next_update)
