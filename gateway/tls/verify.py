"""The verify callback: OpenSSL's verdict, then revocation, written into PeerVerification.

``install_verify`` installs it through ``gateway.tls.native`` (pyOpenSSL's public
``set_verify`` cannot set the X509 error of a refused certificate, which picks the alert).
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs
from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.logger import Logger

from gateway.peer import PeerVerification, VerifyFailure
from gateway.reasons import Reason
from gateway.tls.native import install_verify_callback, verify_error_string

log = Logger()

_V = SSL.X509VerificationCodes
# OpenSSL verification codes -> the reason classes the gateway logs and counts.
_REASONS = {
    _V.ERR_CERT_HAS_EXPIRED: Reason.EXPIRED,
    _V.ERR_CERT_NOT_YET_VALID: Reason.NOT_YET_VALID,
    _V.ERR_CERT_REVOKED: Reason.REVOKED,
    _V.ERR_UNABLE_TO_GET_ISSUER_CERT: Reason.UNKNOWN_CA,
    _V.ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY: Reason.UNKNOWN_CA,
    _V.ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE: Reason.UNKNOWN_CA,
    _V.ERR_DEPTH_ZERO_SELF_SIGNED_CERT: Reason.UNKNOWN_CA,
    _V.ERR_SELF_SIGNED_CERT_IN_CHAIN: Reason.UNKNOWN_CA,
}


# OpenSSL alerts unknown_ca for "unable to get CRL" and certificate_expired for "CRL has
# expired": both send device-side debugging the wrong way (to the CA bundle, to the device's
# certificate). A certificate whose revocation status cannot be determined is refused with
# certificate_unknown instead: OpenSSL's alert for an X509 error outside its alert table. The
# log and the counters keep the precise error.
ALERT_UNDETERMINED = _V.ERR_CRL_PATH_VALIDATION_ERROR
_ALERT_CODES = {
    _V.ERR_UNABLE_TO_GET_CRL: ALERT_UNDETERMINED,
    _V.ERR_CRL_HAS_EXPIRED: ALERT_UNDETERMINED,
}


def verify_reason(error_number: int) -> Reason:
    """The reason class of an OpenSSL X509 verification error."""
    return _REASONS.get(error_number, Reason.BAD_CERTIFICATE)


def verify_error_text(error_number: int) -> str:
    """OpenSSL's text for an X509 verification error (e.g. 'certificate has expired')."""
    return verify_error_string(error_number)


class GatewayConnection(SSL.Connection):
    """An ``SSL.Connection`` that carries its PeerVerification record.

    Twisted's TLS layer claims the connection's app data (it stores the TLS protocol there),
    so the record travels as an attribute of the connection itself: the verify callback
    finds it from the connection OpenSSL hands it, the protocol through ``getHandle()``.
    """

    def __init__(
        self, context: SSL.Context, verification: PeerVerification, sock: Any = None
    ) -> None:
        super().__init__(context, sock)  # with a socket: OpenSSL reads and writes it itself
        self.verification = verification


class HandshakeRevocation(Protocol):
    """What the verifier asks of revocation checking (``RevocationChecker``)."""

    def check(
        self,
        cert: x509.Certificate,
        issuer: bytes,
        serial: int,
        depth: int,
        verification: PeerVerification | None,
    ) -> tuple[Reason, int] | None: ...

    def note_ca(self, cert: x509.Certificate) -> None: ...


def _failure(reason: Reason, errno: int, depth: int, cert: x509.Certificate) -> VerifyFailure:
    return VerifyFailure(
        reason, errno, depth, cert.subject.rfc4514_string(), format(cert.serial_number, "X")
    )


class CertificateVerifier:
    """Decides each certificate of a client's chain, from the root down to the leaf.

    OpenSSL's own verdict is kept: a certificate OpenSSL refused is never accepted. For a
    chain OpenSSL accepted, the revocation checker (if CRL checking is on) may refuse a
    certificate. ``decide`` returns 0 to accept, else the X509 error to fail with, which
    OpenSSL turns into the TLS alert (certificate_revoked for a revoked one).

    Exceptions never escape into OpenSSL (as Twisted's ``_tolerateErrors`` notes, they would
    fail the handshake confusingly): they are logged and the certificate refused.
    """

    def __init__(self, revocation: HandshakeRevocation | None = None) -> None:
        self.revocation = revocation
        # One bytes object per issuer name, shared by every connection's recorded chain
        # (a verified chain's issuers are the CA bundle's: few). Bounded all the same.
        self._issuers: dict[bytes, bytes] = {}
        # What the check needs of each CA certificate OpenSSL accepted above a leaf, by its
        # DER: every handshake meets the same few (the CA bundle's, or intermediates the
        # CAs issued), and parsing them again for each device was a tenth of the Python
        # work of a handshake. Only what the DER alone decides is kept: revocation is
        # checked on every handshake. Bounded: a full table just stops growing.
        self._cas: dict[bytes, _Parsed] = {}

    def _parse(self, cert: crypto.X509, depth: int) -> _Parsed:
        if depth == 0:  # a device's own: new on every handshake
            return self._parsed(cert.to_cryptography())
        der = crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)
        known = self._cas.get(der)
        if known is None:
            known = self._parsed(x509.load_der_x509_certificate(der))
            if len(self._cas) < _CAS_KEPT:
                self._cas[der] = known
            if not known.self_issued and self.revocation is not None:
                self.revocation.note_ca(known.cert)  # a resumed session's path, later
        return known

    def _parsed(self, parsed: x509.Certificate) -> _Parsed:
        issuer_name = parsed.issuer
        issuer = issuer_name.public_bytes()
        if len(self._issuers) < _ISSUERS_SHARED:
            issuer = self._issuers.setdefault(issuer, issuer)
        else:
            issuer = self._issuers.get(issuer, issuer)
        return _Parsed(parsed, issuer, issuer_name == parsed.subject)

    def decide(
        self, connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> int:
        verification = (
            connection.verification if isinstance(connection, GatewayConnection) else None
        )
        if not ok:
            if verification is not None:
                verification.note_failure(
                    _failure(verify_reason(errno), errno, depth, cert.to_cryptography())
                )
            return errno or _V.ERR_APPLICATION_VERIFICATION
        if self.revocation is None:
            return 0
        if verification is not None and not verification.chain:  # the trust anchor
            verification.tenant = chain_tenant(connection, cert)
        known = self._parse(cert, depth)
        parsed, issuer = known.cert, known.issuer
        if depth == 0 and verification is not None:
            verification.leaf = parsed  # the relay's log line takes it: no second parse
        serial = cert.get_serial_number()  # OpenSSL's: exact for the negative serials of old CAs
        if verification is not None:
            verification.chain += ((issuer, serial),)
        if known.self_issued:
            if verification is not None:
                verification.above = parsed
            return 0  # a trust anchor: nothing above it to revoke it
        verdict = self.revocation.check(parsed, issuer, serial, depth, verification)
        if verification is not None:
            verification.above = parsed if depth > 0 else None
        if verdict is None:
            return 0
        reason, code = verdict
        if verification is not None:
            verification.note_failure(_failure(reason, code, depth, parsed))
        return _ALERT_CODES.get(code, code)

    # pyOpenSSL-style callback, for the fallback path.
    def __call__(
        self, connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        try:
            return self.decide(connection, cert, errno, depth, ok) == 0
        except Exception:
            log.failure("certificate verification callback failed; refusing the certificate")
            return False


def chain_tenant(connection: SSL.Connection, anchor: crypto.X509) -> str | None:
    """The tenant whose revocation policy judges a chain: the one its server name chose
    (the context switched to), else the one whose ``match_ca`` is its trust ``anchor``."""
    ctx = connection.get_context()
    tenant: str | None = getattr(ctx, "mqttgw_tenant", None)
    if tenant is None:
        anchors = getattr(ctx, "mqttgw_anchors", None)
        if anchors:
            tenant = anchors.get(anchor_key(anchor))
    return tenant


def anchor_key(cert: crypto.X509) -> bytes:
    """What ``mqttgw_anchors`` is keyed by: the SHA-256 of the CA's DER (OpenSSL's digest:
    no certificate parsed)."""
    return bytes.fromhex(cert.digest("sha256").decode().replace(":", ""))


_ISSUERS_SHARED = 4096
_CAS_KEPT = 1024


@attrs.frozen
class _Parsed:
    """What the check needs of one certificate."""

    cert: x509.Certificate
    issuer: bytes  # DER of its issuer's name (shared between connections)
    self_issued: bool


def install_verify(ctx: SSL.Context, mode: int, verifier: CertificateVerifier) -> None:
    """Install ``verifier`` as the context's verify callback."""
    install_verify_callback(ctx, mode, verifier.decide, verifier)
