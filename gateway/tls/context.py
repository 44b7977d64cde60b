"""Build each listener's pyOpenSSL context; hand out connections from the current one.

pyOpenSSL freezes a Context once its first Connection exists, so anything that must change
later (a new CRL index, an OCSP stapling callback) is installed on a freshly built Context
that ``ServerConnectionCreator.swap`` puts in place for new connections only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from gateway.config import ListenerConfig

log = Logger()

_VERSIONS = {"tlsv1.2": SSL.TLS1_2_VERSION, "tlsv1.3": SSL.TLS1_3_VERSION}

# OpenSSL verification codes -> the reason classes the gateway logs and counts.
_V = SSL.X509VerificationCodes
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


def split_ciphers(ciphers: Iterable[str]) -> tuple[str, str]:
    """(TLS 1.3 suites, TLS 1.2 cipher list) in OpenSSL's colon-separated syntax."""
    names = list(ciphers)
    tls13 = ":".join(c for c in names if c.startswith("TLS_"))
    tls12 = ":".join(c for c in names if not c.startswith("TLS_"))
    return tls13, tls12


def _apply_ciphers(ctx: SSL.Context, ciphers: Iterable[str]) -> None:
    tls13, tls12 = split_ciphers(ciphers)
    try:
        if tls13:
            ctx.set_tls13_ciphersuites(tls13.encode("ascii"))
        if tls12:
            ctx.set_cipher_list(tls12.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError) as e:
        raise ValueError(f"OpenSSL accepts none of these ciphers ({e})") from None


def check_ciphers(ciphers: Iterable[str]) -> None:
    """Raise ValueError if OpenSSL rejects the cipher list."""
    _apply_ciphers(SSL.Context(SSL.TLS_SERVER_METHOD), ciphers)


def session_id_context(listener_name: str) -> bytes:
    # At most 32 bytes; stable per listener so that resumed sessions stay on their listener.
    return hashlib.sha256(b"mqttgw:" + listener_name.encode("utf-8")).digest()[:16]


def build_context(listener: ListenerConfig, verify_callback: CertificateVerifier) -> SSL.Context:
    """A server context for one listener, from its (already validated) configuration."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    versions = [_VERSIONS[v] for v in listener.tls_versions]
    ctx.set_min_proto_version(min(versions))
    ctx.set_max_proto_version(max(versions))
    ctx.set_options(
        SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION
    )
    # Idle connections are MQTT's normal state: give the read/write buffers back meanwhile.
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.use_certificate_chain_file(listener.certfile.encode())
    ctx.use_privatekey_file(listener.keyfile.encode())
    ctx.check_privatekey()
    if listener.ciphers:
        _apply_ciphers(ctx, listener.ciphers)
    # Without a session id context, OpenSSL fails a TLS 1.2 client's resumption attempt.
    ctx.set_session_id(session_id_context(listener.name))
    ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    if listener.verify_peer:
        assert listener.cacertfile is not None  # enforced by the configuration
        ctx.load_verify_locations(listener.cacertfile.encode())
        # The acceptable-CA list sent in CertificateRequest: the subjects of cacertfile.
        ctx.load_client_ca(listener.cacertfile.encode())
        mode = SSL.VERIFY_PEER
        if listener.fail_if_no_peer_cert:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        install_verify(ctx, mode, verify_callback)
        ctx.set_verify_depth(listener.depth)
    else:
        ctx.set_verify(SSL.VERIFY_NONE)
    return ctx


@implementer(IOpenSSLServerConnectionCreator)
class ServerConnectionCreator:
    """Hands out ``SSL.Connection(current_context)``; ``swap`` affects new connections only.

    The connection's app data is the TLS protocol, so that verification callbacks can reach
    the connection's own state (``tlsProtocol.wrappedProtocol``).
    """

    def __init__(self, context: SSL.Context) -> None:
        self.context = context

    def swap(self, context: SSL.Context) -> None:
        self.context = context

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tlsProtocol)
        return connection


class CertificateVerifier:
    """Decides each certificate of a client's chain, from the root down to the leaf.

    OpenSSL's own verdict is kept: a certificate OpenSSL refused is never accepted. For a
    chain OpenSSL accepted, the revocation checker (if CRL checking is on) may refuse a
    certificate. ``decide`` returns 0 to accept, else the X509 error to fail with, which
    OpenSSL turns into the TLS alert (certificate_revoked for a revoked one).

    Exceptions never escape into OpenSSL (as Twisted's ``_tolerateErrors`` notes, they would
    fail the handshake confusingly): they are logged and the certificate refused.
    """

    def __init__(self, revocation: Any = None) -> None:
        self.revocation = revocation

    def decide(
        self, connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> int:
        state = _connection_state(connection)
        if not ok:
            _note_failure(state, verify_reason(errno), errno, depth, cert.to_cryptography())
            return errno or _V.ERR_APPLICATION_VERIFICATION
        if self.revocation is None:
            return 0
        parsed = cert.to_cryptography()
        issuer = parsed.issuer.public_bytes()
        serial = parsed.serial_number
        if state is not None:
            state.chain.append((issuer, serial))
        if parsed.issuer == parsed.subject:
            return 0  # a trust anchor: nothing above it to revoke it
        verdict = self.revocation.check(parsed, issuer, serial, depth, state)
        if verdict is None:
            return 0
        reason, code = verdict
        _note_failure(state, reason, code, depth, parsed)
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


def _connection_state(connection: SSL.Connection) -> Any:
    """The ClientProtocol of a connection (set as app data by ServerConnectionCreator)."""
    tls_protocol = connection.get_app_data()
    return getattr(tls_protocol, "wrappedProtocol", None)


def _note_failure(state: Any, reason: str, errno: int, depth: int, cert: x509.Certificate) -> None:
    note = getattr(state, "note_verify_failure", None)
    if note is not None:
        note(reason, errno, depth, cert.subject.rfc4514_string(), format(cert.serial_number, "X"))


def install_verify(ctx: SSL.Context, mode: int, verifier: CertificateVerifier) -> None:
    """Install ``verifier`` as the context's verify callback.

    pyOpenSSL's ``set_verify`` cannot set the X509 error of a certificate the callback
    refuses, so OpenSSL would send a generic alert for a revoked certificate. This installs
    a cffi callback of the same shape that does set it. If pyOpenSSL's internals differ
    from what is expected, it falls back to ``set_verify`` (correct, with a generic alert).
    """
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
