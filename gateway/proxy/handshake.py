"""What the relay reads off a completed TLS handshake, as plain values: OpenSSL's words for a
failure and its reason class, the client certificate's subject and serial, the identities
it gives (``peer_cert_as_*``, the topic rules' user name), and the TLS facts a PROXY v2
header carries to the broker."""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL, crypto
from twisted.python.failure import Failure

from gateway.choices import IdentitySource, ProxyVersion
from gateway.config.model import IdentitySettings
from gateway.deny import DenyList
from gateway.failures import ssl_error_words
from gateway.mqtt.rewrite import rewrite_connect
from gateway.peer import PeerVerification, VerifyFailure
from gateway.proxy import proxyproto
from gateway.proxy.contracts import ListenerRules
from gateway.proxy.identity import common_name, identity_of
from gateway.proxy.session_log import SessionLog
from gateway.reasons import Reason
from gateway.tls.verify import anchor_key, verify_error_text

# With peer_cert_as_*: (user name, client id) from the certificate, or why not.
Identity = tuple[str | None, str | None] | ValueError


def ssl_error_text(exc: BaseException | None) -> str:
    """OpenSSL's reason strings from an SSL.Error, else the exception's text."""
    if isinstance(exc, SSL.Error):
        return ssl_error_words(exc)
    if exc is None:
        return "unknown"
    return str(exc) or exc.__class__.__name__


def classify_handshake_failure(reason: Failure) -> Reason:
    text = ssl_error_text(reason.value)
    if "peer did not return a certificate" in text:
        return Reason.NO_CERTIFICATE
    if reason.check(SSL.Error):
        return Reason.TLS_ERROR
    return Reason.CLOSED_IN_HANDSHAKE


def handshake_refusal(failure: VerifyFailure | None, reason: Failure) -> tuple[Reason, str]:
    """(reason class, detail) of a handshake that did not complete: the certificate's
    verification failure if there was one, else OpenSSL's words."""
    if failure is not None:
        return failure.reason, (
            f"certificate verification failed at depth {failure.depth}: "
            + verify_error_text(failure.errno)
        )
    return classify_handshake_failure(reason), ssl_error_text(reason.value)


def why_not_completed(
    verification: PeerVerification, record: SessionLog, reason: Failure, transport: Any
) -> tuple[Reason, str]:
    """(reason class, detail) of a handshake that did not complete; the certificate that
    failed verification, if one did, and the tenant its name (or CA) chose, named in the
    session log."""
    handle = transport.getHandle()
    if isinstance(handle, SSL.Connection):
        record.tenant = getattr(handle.get_context(), "mqttgw_tenant", None)
    record.tenant = record.tenant or verification.tenant
    failure = verification.failure
    if failure is not None:
        record.subject, record.serial = failure.subject, failure.serial
    return handshake_refusal(failure, reason)


def taken_from(
    cert: x509.Certificate, home: ListenerRules, tenant: str | None
) -> tuple[Identity | None, str | None, str | None]:
    """What the relay keeps of the client certificate, taken once from the parsed one:
    ``peer_cert_as_*``'s identity, the topic rules' user name (with acl_file) and the CN
    for a PROXY v2 header to the broker (with upstream_proxy_protocol = v2); by the
    tenant's own rules where it has them."""
    rules = home.identity_for(tenant)
    identity = rewrite_identity(cert, rules)
    acl_user = rules_user(cert, rules) if home.acl_for(tenant) is not None else None
    v2 = home.upstream_proxy_protocol == ProxyVersion.V2
    return identity, acl_user, common_name(cert) if v2 else None


_PEERS_KEPT = 1024  # client certificates of resumed sessions kept parsed, by DER


class ParsedPeers:
    """Client certificates parsed once, by their DER (a certificate is its DER: the same
    bytes, the same subject, serial and extensions), with the session line's words for
    them: a device resuming its session again and again costs a dictionary look-up, not a
    parse and an RFC 4514 rendering. Bounded: when full it starts again."""

    def __init__(self, kept: int = _PEERS_KEPT) -> None:
        self.kept = kept
        self._by_der: dict[bytes, tuple[str, str, x509.Certificate]] = {}

    def describe(self, der: bytes) -> tuple[str, str, x509.Certificate]:
        known = self._by_der.get(der)
        if known is None:
            cert = x509.load_der_x509_certificate(der)
            known = (cert.subject.rfc4514_string(), format(cert.serial_number, "X"), cert)
            if len(self._by_der) >= self.kept:
                self._by_der.clear()
            self._by_der[der] = known
        return known


_parsed_peers = ParsedPeers()


def describe_peer_certificate(
    connection: SSL.Connection, parsed: x509.Certificate | None = None
) -> tuple[str, str, x509.Certificate | None]:
    """(subject, serial, the parsed certificate) of the client, or ("-", "-", None).
    ``parsed``: the certificate as the verify callback parsed it, if it did (a full
    handshake); else (a resumed session) the one OpenSSL keeps in the session, parsed
    once per certificate (``ParsedPeers``)."""
    if parsed is not None:
        return parsed.subject.rfc4514_string(), format(parsed.serial_number, "X"), parsed
    held = connection.get_peer_certificate()
    if held is None:
        return "-", "-", None
    return _parsed_peers.describe(crypto.dump_certificate(crypto.FILETYPE_ASN1, held))


def deny_refusal(deny: DenyList | None, cert: x509.Certificate) -> tuple[Reason, str] | None:
    """The refusal when deny_file names ``cert`` (at every handshake, resumed or not, and
    in a reload's sweep of the live sessions), else None."""
    hit = deny.match(cert) if deny is not None else None
    return (Reason.DENY_LISTED, f"deny_file: {hit}") if hit is not None else None


def after_handshake(
    home: Any, connection: SSL.Connection, cert: x509.Certificate | None, record: SessionLog
) -> tuple[Reason, str] | None:
    """The checks of every completed handshake, resumed or not, after revocation's: the
    tenant its server name (or CA) chose is still served (not disabled, not removed by a reload),
    deny_file does not name the certificate, a resumed session chains to its name's CAs."""
    if record.tenant is not None and record.tenant not in home.tenants_enabled:
        return Reason.TENANT_DISABLED, f"tenant {record.tenant} is disabled or was removed"
    if cert is None:
        return None
    refusal = deny_refusal(home.deny, cert)
    if refusal is None and record.resumed:
        refusal = resumed_anchor_refusal(connection, cert)
    return refusal


def anchored_tenant(connection: SSL.Connection, cert: x509.Certificate) -> str | None:
    """The tenant whose ``match_ca`` anchored the device's chain, on the listener's own
    context (no server name, or one no tenant serves): from the chain OpenSSL verified, or
    for a resumed session the chain rebuilt from the CAs (checked by
    ``resumed_anchor_refusal`` next)."""
    ctx = connection.get_context()
    anchors = getattr(ctx, "mqttgw_anchors", None)
    if not anchors:
        return None
    chain = connection.get_verified_chain()  # (OpenSSL's objects: no certificate parsed)
    if chain:
        return anchors.get(anchor_key(chain[-1]))
    path = ctx.mqttgw_issuers.path(cert)  # type: ignore[attr-defined]
    return anchors.get(path[-1].fingerprint(hashes.SHA256())) if path else None


def resumed_anchor_refusal(
    connection: SSL.Connection, cert: x509.Certificate
) -> tuple[Reason, str] | None:
    """With tenants that have their own device CAs: a resumed session's certificate must
    chain, signature by signature, to the CAs of the name it resumed under (OpenSSL does
    not verify a resumed session; a session of one tenant must not open another's name)."""
    issuers = getattr(connection.get_context(), "mqttgw_issuers", None)
    if issuers is None:
        return None
    path = issuers.path(cert)
    try:
        if path is None:
            raise ValueError("no issuer")
        for child, parent in zip(path, path[1:], strict=False):
            child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        why = "resumed session: the certificate does not chain to this server name's CAs"
        return Reason.UNKNOWN_CA, why
    return None


def peer_certificate(transport: Any) -> x509.Certificate | None:
    """A live session's client certificate, as OpenSSL keeps it (a reload's sweep)."""
    handle = transport.getHandle()
    if not isinstance(handle, SSL.Connection):  # (a ws listener: no TLS here)
        return None
    return handle.get_peer_certificate(as_cryptography=True)


def rewrite_identity(cert: x509.Certificate, identity: IdentitySettings) -> Identity | None:
    """What ``peer_cert_as_username`` / ``peer_cert_as_clientid`` take from ``cert`` (None
    on listeners that rewrite nothing); taken once, from the certificate already parsed."""
    if not (identity.username or identity.client_id):
        return None
    try:
        return (
            identity_of(cert, identity.username) if identity.username else None,
            identity_of(cert, identity.client_id) if identity.client_id else None,
        )
    except ValueError as e:
        return e


def rewritten(first: bytes, packet: bytes, taken: Identity | None) -> bytes:
    """``first`` (the CONNECT ``packet`` and what came with it) with the user name / client
    id the certificate gives; ValueError when it gives none (checked at configuration:
    these listeners require a certificate) or the value cannot be encoded."""
    if isinstance(taken, ValueError):
        raise taken
    if taken is None:
        raise ValueError("no client certificate to take the identity from")
    username, client_id = taken
    return rewrite_connect(packet, username, client_id) + first[len(packet) :]


def rules_user(cert: x509.Certificate, identity: IdentitySettings) -> str:
    """The user name the topic rules know the device by: peer_cert_as_username's value,
    else the CN ("" when the certificate has neither: it fills no pattern, matches no user
    line)."""
    try:
        return identity_of(cert, identity.username or IdentitySource.CN)
    except ValueError:
        return ""


def proxy_header(
    version: ProxyVersion | None,
    record: SessionLog,
    cn: str | None,
    verified: bool,
    transport: Any,
) -> bytes:
    """The PROXY header to the broker (b"": none): the device's address as the listener
    admitted it (``record.peer``, from a PROXY header in front when there is one), the
    address it reached, and with v2 the TLS facts (version, cipher, whether a certificate
    came and was ``verified``, its ``cn``, whether the session resumed)."""
    if version is None:
        return b""
    host, handle = transport.getHost(), transport.getHandle()
    peer_host, _, peer_port = record.peer.rpartition(":")
    source = (peer_host.strip("[]"), int(peer_port) if peer_port.isdigit() else 0)
    destination = (getattr(host, "host", "0.0.0.0"), getattr(host, "port", 0))
    if version == ProxyVersion.V1:
        return proxyproto.header_v1(source, destination)
    tls = None
    if isinstance(handle, SSL.Connection):
        has_cert = record.has_certificate
        tls = proxyproto.TlsFacts(
            version=handle.get_protocol_version_name(),
            cipher=handle.get_cipher_name() or "",
            cert_in_connection=has_cert,
            verified=has_cert and verified,
            cn=cn,
            resumed=record.resumed,
        )
    return proxyproto.header_v2(source, destination, tls)
