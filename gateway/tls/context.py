"""Build each listener's pyOpenSSL context from its settings and loaded material; hand out
connections from it, each carrying its PeerVerification record.

pyOpenSSL freezes a Context once its first Connection exists, so anything that must change
later (new material on a reload) goes into a freshly built Context, which becomes the
creator's ``context`` for new connections only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from gateway.config.model import TlsSettings
from gateway.config.tenants import tenant_for
from gateway.peer import PeerVerification
from gateway.revocation.chains import IssuerIndex
from gateway.tls.material import TlsMaterial, apply_suites
from gateway.tls.native import install_servername_callback
from gateway.tls.verify import CertificateVerifier, GatewayConnection, install_verify

_VERSIONS = {"tlsv1.2": SSL.TLS1_2_VERSION, "tlsv1.3": SSL.TLS1_3_VERSION}


def session_id_context(listener_name: str) -> bytes:
    # At most 32 bytes; stable per listener so that resumed sessions stay on their listener.
    return hashlib.sha256(b"mqttgw:" + listener_name.encode("utf-8")).digest()[:16]


def build_context(
    name: str,
    tls: TlsSettings,
    material: TlsMaterial,
    verifier: CertificateVerifier,
    tenant_staplers: Mapping[str, Any] | None = None,
) -> SSL.Context:
    """A server context for listener ``name``, from checked settings and material; with
    tenants, the client's server name (SNI) switches a connection to its tenant's context:
    its certificate, and its own device CAs where it has them (their own session id
    context too; and since a resumed session is not verified again, each context then
    names the CAs a resumed session's certificate must chain to: ``mqttgw_issuers``)."""
    cas = material.ca_certs
    matched = [(ca, t.settings.id) for t in material.tenants for ca in t.match_cas]
    bare_cas = [*cas, *(ca for ca, _ in matched)]  # (match_ca: those devices, no name)
    ctx = _context(name, tls, bare_cas, verifier, material.chain, material.key)
    own_cas = any(t.issuers is not None for t in material.tenants) or bool(matched)
    issuers = IssuerIndex.of(bare_cas) if matched else material.issuers
    if own_cas:
        ctx.mqttgw_issuers = issuers  # type: ignore[attr-defined]
    if matched:  # the anchor of a device's chain -> its tenant (SHA-256 of the CA's DER)
        anchors = {ca.fingerprint(hashes.SHA256()): tenant for ca, tenant in matched}
        ctx.mqttgw_anchors = anchors  # type: ignore[attr-defined]
    if material.tenants or tls.sni_strict:
        by_name = {}
        for tenant in material.tenants:
            mine = tenant.issuers is not None
            tenant_ctx = _context(
                f"{name}/{tenant.settings.id}" if mine else name,
                tls,
                tenant.ca_certs if mine else cas,
                verifier,
                tenant.chain,
                tenant.key,
            )
            tenant_ctx.mqttgw_tenant = tenant.settings.id  # type: ignore[attr-defined]  # (the log's)
            stapler = (tenant_staplers or {}).get(tenant.settings.id)
            if stapler is not None:  # its own certificate's staple
                stapler.install(tenant_ctx)
            if own_cas:
                # (its own CAs, or the listener's: never match_ca's, which only the bare
                # name admits)
                tenant_ctx.mqttgw_issuers = tenant.issuers or material.issuers  # type: ignore[attr-defined]
            for server_name in tenant.settings.server_names:
                by_name[server_name] = tenant_ctx
        install_servername_callback(ctx, servername_chooser(by_name, tls.sni_strict))
    return ctx


def servername_chooser(
    by_name: dict[str, SSL.Context], strict: bool
) -> Callable[[SSL.Connection], bool]:
    """The servername callback: the tenant's context for the name the client sent (False
    refuses it with unrecognized_name: ``sni_strict`` and no tenant serves the name).
    Reads nothing but the map it was built with."""

    def choose(connection: SSL.Connection) -> bool:
        chosen = tenant_for(by_name, connection.get_servername())
        if chosen is None:
            return not strict
        connection.set_context(chosen)
        return True

    return choose


def _context(
    name: str,
    tls: TlsSettings,
    ca_certs: Sequence[Any],
    verifier: CertificateVerifier,
    chain: Sequence[Any],
    key: Any,
) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    versions = [_VERSIONS[v] for v in tls.versions]
    ctx.set_min_proto_version(min(versions))
    ctx.set_max_proto_version(max(versions))
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    # Idle connections are MQTT's normal state: give the read/write buffers back meanwhile.
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.use_certificate(chain[0])
    for cert in chain[1:]:
        ctx.add_extra_chain_cert(cert)
    ctx.use_privatekey(key)  # checked: a signing key
    ctx.check_privatekey()
    apply_suites(ctx, tls)  # checked when the material was loaded
    # Without a session id context, OpenSSL fails a TLS 1.2 client's resumption attempt.
    ctx.set_session_id(session_id_context(name))
    ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    if tls.verify_peer:
        store = ctx.get_cert_store()
        assert store is not None
        seen = set()
        for ca in ca_certs:
            store.add_cert(crypto.X509.from_cryptography(ca))
            # The acceptable-CA list sent in CertificateRequest: the subjects of cacertfile.
            if ca.subject not in seen:
                seen.add(ca.subject)
                ctx.add_client_ca(ca)
        mode = SSL.VERIFY_PEER
        if tls.fail_if_no_peer_cert:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        install_verify(ctx, mode, verifier)
        ctx.set_verify_depth(tls.depth)
    else:
        ctx.set_verify(SSL.VERIFY_NONE)
    if tls.alpn:
        ctx.set_alpn_select_callback(alpn_selector(tls.alpn))
    return ctx


def alpn_selector(offered: tuple[str, ...]) -> Callable[[SSL.Connection, list[bytes]], Any]:
    """The ALPN select callback: the first of the listener's names (its order of preference)
    that the client offers. None in common refuses the handshake with the
    no_application_protocol alert (RFC 7301: pyOpenSSL turns an exception of the callback
    into that fatal alert, and raises it from the handshake: the refusal's log line says
    what was offered). Reads nothing but the list it was built with."""
    ours = [name.encode("ascii") for name in offered]

    def select(connection: SSL.Connection, theirs: list[bytes]) -> Any:
        for name in ours:
            if name in theirs:
                return name
        what = ", ".join(t.decode("ascii", "replace") for t in theirs)[:200]
        raise SSL.Error([("", "", f"no application protocol in common (offered: {what})")])

    return select


@implementer(IOpenSSLServerConnectionCreator)
class ServerConnectionCreator:
    """Hands out a ``GatewayConnection`` of the listener's current context (``context()``:
    a reload's new one from the next connection on), each with a fresh PeerVerification."""

    def __init__(self, context: Callable[[], SSL.Context | None]) -> None:
        """``context()``: None on a listener without TLS (ws), which never asks."""
        self._context = context

    def context(self) -> SSL.Context:
        ctx = self._context()
        if ctx is None:
            raise RuntimeError("a TLS connection on a listener without TLS")
        return ctx

    def serverConnectionForTLS(self, tlsProtocol: object) -> GatewayConnection:
        return GatewayConnection(self.context(), PeerVerification())


def describe_offer(tls: TlsSettings, material: TlsMaterial) -> list[str]:
    """What a listener's context really offers, as OpenSSL expanded it (check-config's
    comment lines): versions, TLS 1.3 suites, the TLS 1.2 suites the server key can use,
    and the key-exchange groups."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    apply_suites(ctx, tls)
    names = SSL.Connection(ctx, None).get_cipher_list()
    tls13 = [n for n in names if n.startswith("TLS_")]
    auth = "ECDSA" if isinstance(material.key, ec.EllipticCurvePrivateKey) else "RSA"
    tls12 = [n for n in names if not n.startswith("TLS_") and _auth_of(n) == auth]
    lines = [f"versions: {', '.join(tls.versions)}"]
    if "tlsv1.3" in tls.versions:
        lines.append(f"TLS 1.3 suites: {', '.join(tls13) or 'none'}")
    if "tlsv1.2" in tls.versions:
        lines.append(f"TLS 1.2 suites usable with its {auth} key: {', '.join(tls12) or 'NONE'}")
    lines.append(f"key-exchange groups: {', '.join(tls.groups)}")
    order = "server's" if tls.honor_cipher_order else "client's"
    lines.append(f"cipher order: the {order}")
    return lines


def _auth_of(cipher: str) -> str:
    if "ECDSA" in cipher:
        return "ECDSA"
    if cipher.startswith(("PSK", "SRP", "ADH", "AECDH")):
        return "other"
    return "RSA"
