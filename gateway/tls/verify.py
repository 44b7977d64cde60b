"""The verify callback: OpenSSL's verdict, then revocation, written into PeerVerification.

This is the only module that touches pyOpenSSL's internals (``OpenSSL._util``): pyOpenSSL's
public ``set_verify`` cannot set the X509 error of a certificate the callback refuses, so
OpenSSL would send a generic alert for a revoked certificate. ``install_verify`` installs a
cffi callback of the same shape that does set it, and falls back (with a warning) to
``set_verify`` where those internals are not as expected.
"""

from __future__ import annotations

from typing import Any, Protocol

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.logger import Logger

from gateway.peer import PeerVerification, VerifyFailure

log = Logger()

_V = SSL.X509VerificationCodes
# OpenSSL verification codes -> the reason classes the gateway logs and counts.
_REASONS = {
    _V.ERR_CERT_HAS_EXPIRED: "expired",
    _V.ERR_CERT_NOT_YET_VALID: "not_yet_valid",
    _V.ERR_CERT_REVOKED: "revoked",
    _V.ERR_UNABLE_TO_GET_ISSUER_CERT: "unknown_ca",
    _V.ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY: "unknown_ca",
    _V.ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE: "unknown_ca",
    _V.ERR_DEPTH_ZERO_SELF_SIGNED_CERT: "unknown_ca",
    _V.ERR_SELF_SIGNED_CERT_IN_CHAIN: "unknown_ca",
}


def verify_reason(error_number: int) -> str:
    """The reason class of an OpenSSL X509 verification error."""
    return _REASONS.get(error_number, "bad_certificate")


def verify_error_text(error_number: int) -> str:
    """OpenSSL's text for an X509 verification error (e.g. 'certificate has expired')."""
    try:
        from OpenSSL._util import ffi, lib  # pyOpenSSL exposes no public helper for this

        return str(ffi.string(lib.X509_verify_cert_error_string(error_number)).decode())
    except Exception:
        return f"X509 verification error {error_number}"


class GatewayConnection(SSL.Connection):
    """An ``SSL.Connection`` that carries its PeerVerification record.

    Twisted's TLS layer claims the connection's app data (it stores the TLS protocol there),
    so the record travels as an attribute of the connection itself: the verify callback
    finds it from the connection OpenSSL hands it, the protocol through ``getHandle()``.
    """

    def __init__(self, context: SSL.Context, verification: PeerVerification) -> None:
        super().__init__(context, None)
        self.verification = verification


class Revocation(Protocol):
    """What the verifier asks of revocation checking (``RevocationChecker``)."""

    def check(
        self,
        cert: x509.Certificate,
        issuer: bytes,
        serial: int,
        depth: int,
        verification: PeerVerification | None,
    ) -> tuple[str, int] | None: ...


def _failure(reason: str, errno: int, depth: int, cert: x509.Certificate) -> VerifyFailure:
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

    def __init__(self, revocation: Revocation | None = None) -> None:
        self.revocation = revocation

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
        parsed = cert.to_cryptography()
        issuer = parsed.issuer.public_bytes()
        serial = cert.get_serial_number()  # OpenSSL's: exact for the negative serials of old CAs
        if verification is not None:
            verification.chain.append((issuer, serial))
        if parsed.issuer == parsed.subject:
            return 0  # a trust anchor: nothing above it to revoke it
        verdict = self.revocation.check(parsed, issuer, serial, depth, verification)
        if verdict is None:
            return 0
        reason, code = verdict
        if verification is not None:
            verification.note_failure(_failure(reason, code, depth, parsed))
        return code

    # pyOpenSSL-style callback, for the fallback path.
    def __call__(
        self, connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        try:
            return self.decide(connection, cert, errno, depth, ok) == 0
        except Exception:
            log.failure("certificate verification callback failed; refusing the certificate")
            return False


def install_verify(ctx: SSL.Context, mode: int, verifier: CertificateVerifier) -> None:
    """Install ``verifier`` as the context's verify callback (see the module docstring)."""
    try:
        from OpenSSL._util import ffi, lib

        reverse = SSL.Connection._reverse_mapping
        from_raw = crypto.X509._from_raw_x509_ptr
        context_ptr = ctx._context  # type: ignore[attr-defined,unused-ignore]
    except (ImportError, AttributeError):
        log.warn("pyOpenSSL internals not as expected: revoked certificates get a generic alert")
        ctx.set_verify(mode, verifier)
        return

    @ffi.callback("int (*)(int, X509_STORE_CTX *)")  # type: ignore[untyped-decorator]
    def callback(ok: int, store_ctx: Any) -> int:
        try:
            raw = lib.X509_STORE_CTX_get_current_cert(store_ctx)
            lib.X509_up_ref(raw)
            cert = from_raw(raw)
            errno = lib.X509_STORE_CTX_get_error(store_ctx)
            depth = lib.X509_STORE_CTX_get_error_depth(store_ctx)
            ssl = lib.X509_STORE_CTX_get_ex_data(
                store_ctx, lib.SSL_get_ex_data_X509_STORE_CTX_idx()
            )
            code = verifier.decide(reverse[ssl], cert, errno, depth, ok)
        except Exception:
            log.failure("certificate verification callback failed; refusing the certificate")
            code = _V.ERR_APPLICATION_VERIFICATION
        if code:
            if ok:
                lib.X509_STORE_CTX_set_error(store_ctx, code)
            return 0
        return 1

    lib.SSL_CTX_set_verify(context_ptr, mode, callback)
    ctx._mqttgw_verify_callback = callback  # type: ignore[attr-defined]  # keep it alive
