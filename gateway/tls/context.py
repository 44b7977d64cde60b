"""Build each listener's pyOpenSSL context; hand out connections from the current one.

pyOpenSSL freezes a Context once its first Connection exists, so anything that must change
later (a new CRL index, an OCSP stapling callback) is installed on a freshly built Context
that ``ServerConnectionCreator.swap`` puts in place for new connections only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

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

VerifyCallback = Callable[[SSL.Connection, crypto.X509, int, int, int], bool]


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


def build_context(listener: ListenerConfig, verify_callback: VerifyCallback) -> SSL.Context:
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
        ctx.set_verify(mode, verify_callback)
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
    """The verify callback: keeps OpenSSL's verdict and tells the connection why it failed.

    Exceptions never escape into OpenSSL (they would fail the handshake with a confusing
    error, as Twisted's ``_tolerateErrors`` notes): they are logged and the certificate is
    refused, failing closed.
    """

    def __call__(
        self, connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        try:
            if not ok:
                _note_failure(connection, verify_reason(errno), errno, depth)
            return bool(ok)
        except Exception:
            log.failure("certificate verification callback failed; refusing the certificate")
            return False


def _note_failure(connection: SSL.Connection, reason: str, errno: int, depth: int) -> None:
    tls_protocol = connection.get_app_data()
    protocol = getattr(tls_protocol, "wrappedProtocol", None)
    note = getattr(protocol, "note_verify_failure", None)
    if note is not None:
        note(reason, errno, depth)
