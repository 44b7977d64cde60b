"""A certificate per server name: the tenant lines, their refusals naming the line, the
name lookup, check-config's text, and the handshake choosing the tenant's certificate."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from cryptography import x509
from OpenSSL import SSL
from twisted.internet.task import Clock

from gateway import testing as support
from gateway.config.effective import format_config
from gateway.config.tenants import crl_reject, crl_urls, parse_server_names, tenant_for
from gateway.demo import pki
from gateway.errors import ConfigError
from gateway.mqtt.acl import WRITE
from gateway.parts import ListenerParts
from gateway.peer import PeerVerification
from gateway.proxy.handshake import anchored_tenant, resumed_anchor_refusal
from gateway.revocation import crl as C
from gateway.revocation.chains import IssuerIndex
from gateway.revocation.checker import RevocationChecker
from gateway.revocation.crl_cache import CrlCache
from gateway.testing import prepare_text
from gateway.testing.crl import OpensslCA
from gateway.tls.context import build_context
from gateway.tls.verify import CertificateVerifier, GatewayConnection


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> support.Pki:
    return support.make_pki(str(tmp_path_factory.mktemp("pki")))


def tenant_cert(p: support.Pki, name: str, *names: str) -> tuple[str, str]:
    return pki.issue(p.inter, name, server=True, names=names).write(p.dir, f"tenant-{name}")


def tenant_lines(tenant: str, cert: tuple[str, str], names: str) -> dict[str, str]:
    at = f"tenant.{tenant}"
    return {f"{at}.server_names": names, f"{at}.certfile": cert[0], f"{at}.keyfile": cert[1]}


def test_server_names_and_the_lookup() -> None:
    assert parse_server_names("A.Example.com, *.b.example.com") == (
        "a.example.com",
        "*.b.example.com",
    )
    for bad in ("", "*.com", "a..b", "-a.b", "a b.c", "*", "x" * 64 + ".com", "a.*.com"):
        with pytest.raises(ValueError):
            parse_server_names(bad)
    table = {"a.example.com": "A", "*.b.example.com": "B"}
    assert tenant_for(table, b"A.EXAMPLE.com") == "A"
    assert tenant_for(table, b"eu.b.example.com") == "B"
    assert tenant_for(table, b"b.example.com") is None  # a wildcard needs its label
    assert tenant_for(table, b"x.eu.b.example.com") is None  # ... and only one
    assert tenant_for(table, None) is None
    assert tenant_for(table, b"\xff.example.com") is None
    assert tenant_for(table, b"a" * 300) is None


def test_tenants_parse_and_check_config_prints_them_back(p: support.Pki) -> None:
    acme = tenant_cert(p, "acme", "mqtt.acme.example", "*.acme.example")
    extra = tenant_lines("acme", acme, "mqtt.acme.example, *.acme.example")
    extra |= {
        "sni_strict": "true",
        "tenant.acme.cacertfile": p.ca_file,
        "tenant.acme.upstream": "127.0.0.1:1884, 127.0.0.1:1885",
    }
    prepared = prepare_text(support.listener_conf("t", 8883, 1883, p, extra))
    listener = prepared.config.listener("t")
    (tenant,) = listener.tenants
    assert tenant.id == "acme" and tenant.server_names == ("mqtt.acme.example", "*.acme.example")
    assert listener.tls.sni_strict
    assert (
        prepared.materials["t"].tenants[0].chain[0].subject.rfc4514_string().startswith("CN=acme,")
    )
    text = format_config(prepared.config)
    assert "listener.ssl.t.tenant.acme.server_names = mqtt.acme.example, *.acme.example" in text
    assert f"listener.ssl.t.tenant.acme.cacertfile = {p.ca_file}" in text
    assert tenant.upstream == (("127.0.0.1", 1884), ("127.0.0.1", 1885))
    looped = tenant_lines("acme", acme, "mqtt.acme.example") | {
        "tenant.acme.upstream": "127.0.0.1:8883"
    }
    with pytest.raises(ConfigError, match="the gateway would relay to itself") as e:
        prepare_text(support.listener_conf("t", 8883, 1883, p, looped))
    assert "tenant.acme.upstream" in str(e.value)
    again = prepare_text(text).config.listener("t")
    assert again == listener


@pytest.mark.parametrize(
    ("extra", "line", "why"),
    [
        ({"tenant.a.ocsp": "x"}, 6, "the key one of server_names, certfile, keyfile"),
        ({"tenant.a.server_names": "a.example"}, 6, "tenant 'a' has no certfile"),
        ({"tenant.a.server_names": "not a name"}, 6, "is not a host name"),
        ({"sni_strict": "true"}, 6, "needs tenants"),
    ],
)
def test_bad_tenant_lines_are_named(
    p: support.Pki, extra: dict[str, str], line: int, why: str
) -> None:
    with pytest.raises(ConfigError) as e:
        prepare_text(support.listener_conf("t", 8883, 1883, p, extra))
    assert e.value.line == line and why in str(e.value)


def test_a_name_served_twice_a_ws_listener_and_a_tenant_without_ocsp_url_are_refused(
    p: support.Pki,
) -> None:
    a, b = tenant_cert(p, "ta", "x.example"), tenant_cert(p, "tb", "x.example")
    twice = tenant_lines("a", a, "x.example") | tenant_lines("b", b, "y.example, X.example")
    with pytest.raises(ConfigError, match="x.example is served by tenant 'a' already"):
        prepare_text(support.listener_conf("t", 8883, 1883, p, twice))
    with pytest.raises(ConfigError, match="tenants need ssl or wss"):
        prepare_text(
            support.listener_conf("w", 8080, 1883, p, tenant_lines("a", a, "x.example"), "ws")
        )
    # Stapling: each tenant's certificate needs its own OCSP URL (or ocsp_responder_url).
    aia = pki.issue(p.inter, "localhost", server=True, ocsp_url="http://127.0.0.1:1/ocsp")
    own_cert, own_key = aia.write(p.dir, "stapled-server")
    stapled = tenant_lines("a", a, "x.example") | {
        "enable_ocsp_stapling": "true",
        "certfile": own_cert,
        "keyfile": own_key,
    }
    with pytest.raises(ConfigError, match="tenant.a.certfile: the certificate has no OCSP URL"):
        prepare_text(support.listener_conf("t", 8883, 1883, p, stapled))
    stapled["ocsp_responder_url"] = "http://127.0.0.1:2/ocsp"
    (tenant,) = (
        prepare_text(support.listener_conf("t", 8883, 1883, p, stapled)).materials["t"].tenants
    )
    assert tenant.ocsp is not None and tenant.ocsp.responder == "http://127.0.0.1:2/ocsp"
    assert tenant.ocsp.cert == tenant.chain[0] and tenant.ocsp.issuer == p.inter.cert
    wrong_key = tenant_lines("a", a, "x.example") | {"tenant.a.keyfile": b[1]}
    with pytest.raises(ConfigError, match="tenant.a.keyfile: does not match the certificate"):
        prepare_text(support.listener_conf("t", 8883, 1883, p, wrong_key))


def _served(
    ctx: SSL.Context, p: support.Pki, name: bytes | None, device: tuple[str, str] | None = None
) -> str:
    """The subject of the certificate a client sending ``name`` is served ("refused" if the
    handshake fails), over memory BIOs."""
    return _handshake(ctx, p, name, device)[0]


def _client_context(p: support.Pki, device: tuple[str, str] | None) -> SSL.Context:
    client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_ctx.load_verify_locations(p.ca_file)
    device_cert, device_key = device or p.client("sni-device")
    client_ctx.use_certificate_chain_file(device_cert)
    client_ctx.use_privatekey_file(device_key)
    return client_ctx


def _handshake(
    ctx: SSL.Context,
    p: support.Pki,
    name: bytes | None,
    device: tuple[str, str] | None = None,
    session: SSL.Session | None = None,
    out: list[SSL.Session] | None = None,
    client_ctx: SSL.Context | None = None,
) -> tuple[str, SSL.Connection]:
    """(what ``_served`` says, the server's side of the connection); ``session``: one to
    resume; ``out`` gets the client's session (its TLS 1.3 ticket read)."""
    client_ctx = client_ctx or _client_context(p, device)
    client, server = SSL.Connection(client_ctx, None), GatewayConnection(ctx, PeerVerification())
    if name is not None:
        client.set_tlsext_host_name(name)
    if session is not None:
        client.set_session(session)
    client.set_connect_state()
    server.set_accept_state()
    for _ in range(10):
        for a, b in ((client, server), (server, client)):
            try:
                a.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error:
                return "refused", server
            try:
                b.bio_write(a.bio_read(65536))
            except SSL.WantReadError:
                pass
    if out is not None:
        try:
            client.recv(1)  # (the server's tickets, after the handshake)
        except SSL.WantReadError:
            pass
        out.append(client.get_session())
    cert = client.get_peer_certificate(as_cryptography=True)
    assert isinstance(cert, x509.Certificate)
    return cert.subject.rfc4514_string().split(",")[0], server


@pytest.mark.parametrize("strict", [False, True])
def test_the_name_sent_chooses_the_certificate(p: support.Pki, strict: bool) -> None:
    acme, beta = tenant_cert(p, "acme", "*.acme.example"), tenant_cert(p, "beta", "beta.example")
    extra = tenant_lines("acme", acme, "*.acme.example") | tenant_lines(
        "beta", beta, "beta.example"
    )
    extra["sni_strict"] = "true" if strict else "false"
    prepared = prepare_text(support.listener_conf("t", 8883, 1883, p, extra))
    listener = prepared.config.listener("t")
    ctx = build_context("t", listener.tls, prepared.materials["t"], CertificateVerifier())
    assert _served(ctx, p, b"eu.acme.example") == "CN=acme"
    assert _served(ctx, p, b"BETA.example") == "CN=beta"
    fallback = "refused" if strict else "CN=localhost"
    assert _served(ctx, p, b"other.example") == fallback
    assert _served(ctx, p, None) == fallback
    assert os.path.exists(acme[0])


def test_a_tenant_with_its_own_cas_judges_its_devices_by_those_only(p: support.Pki) -> None:
    """Tenant b's devices come from its own CA: on b's name they are served, and the
    listener's devices are refused there; on the listener's own name, b's devices are."""
    b_ca = pki.make_ca("tenant b devices CA")
    b_ca_file = pki.write_ca_bundle(os.path.join(p.dir, "b-ca.pem"), b_ca)
    b_device = pki.issue(b_ca, "b-device").write(p.dir, "b-device")
    beta = tenant_cert(p, "beta", "beta.example")
    extra = tenant_lines("beta", beta, "beta.example") | {"tenant.beta.cacertfile": b_ca_file}
    prepared = prepare_text(support.listener_conf("t", 8883, 1883, p, extra))
    listener = prepared.config.listener("t")
    ctx = build_context("t", listener.tls, prepared.materials["t"], CertificateVerifier())
    assert _served(ctx, p, b"beta.example", b_device) == "CN=beta"
    assert _served(ctx, p, b"beta.example") == "refused"  # the listener's device, on b's name
    assert _served(ctx, p, None, b_device) == "refused"  # b's device, on the listener's name
    assert _served(ctx, p, None) == "CN=localhost"


def test_a_resumed_session_must_chain_to_the_cas_of_its_name(p: support.Pki) -> None:
    """OpenSSL verifies nothing on resumption: the gateway checks the certificate against
    the CAs of the context the session resumed under, signature by signature."""
    b_ca = pki.make_ca("tenant b devices CA (resumed)")
    b_device = x509.load_pem_x509_certificate(pki.cert_pem(pki.issue(b_ca, "b-dev").cert))
    mine = x509.load_pem_x509_certificate(pki.cert_pem(pki.issue(p.inter, "mine").cert))
    forged_ca = pki.make_ca("tenant b devices CA (resumed)")  # the same name, another key
    forged = x509.load_pem_x509_certificate(pki.cert_pem(pki.issue(forged_ca, "f").cert))

    class Ctx:
        mqttgw_issuers = IssuerIndex.of([b_ca.cert])

    class Conn:
        def get_context(self) -> Ctx:
            return Ctx()

    assert resumed_anchor_refusal(Conn(), b_device) is None  # type: ignore[arg-type]
    for other in (mine, forged):
        refusal = resumed_anchor_refusal(Conn(), other)  # type: ignore[arg-type]
        assert refusal is not None and refusal[0] == "unknown_ca"


def test_tenants_own_crls_and_failure_policies(p: support.Pki, tmp_path: Path) -> None:
    """Tenants with their own CAs under CRL checking: tenant a's CRL (its own source,
    signed by its own CA, in the listener's one cache) refuses its revoked device; tenant
    b has no CRL and its own crl_expired_policy = accept admits its device; the listener's
    own devices, without a CRL, stay refused by the listener's reject."""
    a_ca = OpensslCA.create(str(tmp_path / "a-ca"), pki.make_ca("tenant a devices CA"))
    a_good = pki.issue(a_ca.issued, "a-good").write(str(tmp_path), "a-good")
    a_bad = pki.issue(a_ca.issued, "a-bad").write(str(tmp_path), "a-bad")
    a_ca.revoke(a_bad[0])
    b_ca = pki.make_ca("tenant b devices CA (crl)")
    b_ca_file = pki.write_ca_bundle(str(tmp_path / "b-ca.pem"), b_ca)
    b_device = pki.issue(b_ca, "b-device").write(str(tmp_path), "b-device")
    extra = (
        tenant_lines("a", tenant_cert(p, "a", "a.example"), "a.example")
        | tenant_lines("b", tenant_cert(p, "b", "b.example"), "b.example")
        | {
            "enable_crl_cache": "true",
            "crl_cache_urls": "http://127.0.0.1:1/listener.crl",
            "tenant.a.cacertfile": os.path.join(a_ca.dir, "ca.pem"),
            "tenant.a.crl_cache_urls": "http://127.0.0.1:1/a.crl",
            "tenant.b.cacertfile": b_ca_file,
            "tenant.b.crl_expired_policy": "accept",
        }
    )
    prepared = prepare_text(support.listener_conf("t", 8883, 1883, p, extra))
    listener, material = prepared.config.listener("t"), prepared.materials["t"]
    assert crl_urls(listener) == ("http://127.0.0.1:1/listener.crl", "http://127.0.0.1:1/a.crl")
    assert crl_reject(listener) == {"a": True, "b": False}
    text = format_config(prepared.config)
    assert "listener.ssl.t.tenant.b.crl_expired_policy = accept" in text
    assert prepare_text(text).config.listener("t") == listener
    trust = x509.load_pem_x509_certificates(material.ca_pem or b"")  # the CRL worker's
    assert len(trust) == len(material.ca_certs) + 2
    clock = Clock()
    clock.advance(time.time())
    cache = CrlCache(clock, 0)
    for loaded in C.load(a_ca.gencrl(), material.revocation_issuers.all(), clock.seconds()):
        cache.install(loaded, "http://127.0.0.1:1/a.crl")
    checker = RevocationChecker(
        cache, listener.crl, None, clock, material.revocation_issuers, None, crl_reject(listener)
    )
    ctx = build_context("t", listener.tls, material, CertificateVerifier(checker))
    assert _served(ctx, p, b"a.example", a_good) == "CN=a"
    assert _served(ctx, p, b"a.example", a_bad) == "refused"
    assert _served(ctx, p, b"b.example", b_device) == "CN=b"
    assert _served(ctx, p, None) == "refused"  # the listener's device: no CRL, reject
    assert checker.counts["revoked"] == 1 and checker.counts["crl_missing"] == 1
    # A resumed session (no verify callback) is judged by its tenant's policy too.
    b_cert = x509.load_pem_x509_certificate(open(b_device[0], "rb").read())
    for tenant, verdict in (("b", None), (None, "crl_missing")):
        resumed = PeerVerification(tenant=tenant)
        refused = checker.check_resumed(b_cert, b_cert.serial_number, resumed)
        assert (refused[0] if refused else None) == verdict


def test_a_ca_name_with_two_keys_across_tenants_is_refused_under_revocation(
    p: support.Pki, tmp_path: Path
) -> None:
    """CRLs name their issuer: with CRL checking, a tenant's CA that has the name of
    another trust domain's CA with another key could sign CRLs for that domain's devices."""
    forged = pki.make_ca("mqttgw test root CA")  # the listener's root's name, another key
    forged_file = pki.write_ca_bundle(str(tmp_path / "forged.pem"), forged)
    extra = tenant_lines("x", tenant_cert(p, "x", "x.example"), "x.example") | {
        "tenant.x.cacertfile": forged_file
    }
    prepare_text(support.listener_conf("t", 8883, 1883, p, extra))  # no revocation: fine
    revoking = extra | {"enable_crl_cache": "true", "crl_cache_urls": "http://127.0.0.1:1/c"}
    with pytest.raises(ConfigError, match="also a CA of the listener, with another key") as e:
        prepare_text(support.listener_conf("t", 8883, 1883, p, revoking))
    assert "tenant.x.cacertfile" in str(e.value)
    shared = revoking | {"tenant.x.cacertfile": p.ca_file}  # the same CAs: one key per name
    prepare_text(support.listener_conf("t", 8883, 1883, p, shared))


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"tenant.a.crl_expired_policy": "accept"}, "needs enable_crl_cache on the listener"),
        ({"tenant.a.crl_cache_urls": "ftp://x"}, "is not an http:// or https:// URL"),
        ({"tenant.a.messages_rate": "fast"}, "tenant.a.messages_rate"),
        (
            {"tenant.a.peer_cert_as_username": "cn", "fail_if_no_peer_cert": "false"},
            "needs verify = verify_peer and fail_if_no_peer_cert = true on the listener",
        ),
    ],
)
def test_bad_tenant_overrides_are_named(p: support.Pki, extra: dict[str, str], why: str) -> None:
    lines = tenant_lines("a", tenant_cert(p, "a", "a.example"), "a.example") | extra
    with pytest.raises(ConfigError) as e:
        prepare_text(support.listener_conf("t", 8883, 1883, p, lines))
    assert why in str(e.value)


def test_match_ca_chooses_the_tenant_of_a_device_that_sends_no_name(p: support.Pki) -> None:
    """A device of tenant m's match_ca CA sending no server name gets the listener's own
    certificate and is m's (the CA that anchored its chain); the listener's own devices are
    no tenant's. A CA two tenants claim, or one of the listener's own, is refused at load."""
    m_ca = pki.make_ca("tenant m devices CA")
    m_ca_file = pki.write_ca_bundle(os.path.join(p.dir, "m-ca.pem"), m_ca)
    m_device = pki.issue(m_ca, "m-device").write(p.dir, "m-device")
    mcert = tenant_cert(p, "m", "m.example")
    extra = tenant_lines("m", mcert, "m.example") | {"tenant.m.match_ca": m_ca_file}
    prepared = prepare_text(support.listener_conf("t", 8883, 1883, p, extra))
    assert "tenant.m.match_ca = " in format_config(prepared.config)
    listener = prepared.config.listener("t")
    ctx = build_context("t", listener.tls, prepared.materials["t"], CertificateVerifier())
    served, server = _handshake(ctx, p, None, m_device)
    assert served == "CN=localhost"
    device_cert = server.get_peer_certificate(as_cryptography=True)
    assert device_cert is not None and anchored_tenant(server, device_cert) == "m"
    served, server = _handshake(ctx, p, None)
    own = server.get_peer_certificate(as_cryptography=True)
    assert own is not None and anchored_tenant(server, own) is None
    twice = extra | tenant_lines("n", tenant_cert(p, "n", "n.example"), "n.example")
    twice["tenant.n.match_ca"] = m_ca_file
    with pytest.raises(ConfigError, match="selects tenant 'm' already"):
        prepare_text(support.listener_conf("t", 8883, 1883, p, twice))
    theirs = tenant_lines("m", mcert, "m.example") | {"tenant.m.match_ca": p.ca_file}
    with pytest.raises(ConfigError, match="is in the listener's cacertfile"):
        prepare_text(support.listener_conf("t", 8883, 1883, p, theirs))


def test_a_match_ca_device_cannot_resume_onto_a_tenants_name(p: support.Pki) -> None:
    """match_ca's CAs admit a device on the bare name only: a session of such a device
    resumed under the name of a tenant that uses the listener's CAs is checked against
    those (not match_ca's) and refused; on the bare name it passes."""
    m_ca = pki.make_ca("tenant m devices CA (resume)")
    m_ca_file = pki.write_ca_bundle(os.path.join(p.dir, "m2-ca.pem"), m_ca)
    m_device = pki.issue(m_ca, "m2-device").write(p.dir, "m2-device")
    extra = tenant_lines("m", tenant_cert(p, "m2", "m.example"), "m.example") | tenant_lines(
        "y", tenant_cert(p, "y", "y.example"), "y.example"
    )
    extra["tenant.m.match_ca"] = m_ca_file
    prepared = prepare_text(support.listener_conf("t", 8883, 1883, p, extra))
    listener = prepared.config.listener("t")
    ctx = build_context("t", listener.tls, prepared.materials["t"], CertificateVerifier())
    served, bare = _handshake(ctx, p, None, m_device)
    cert = bare.get_peer_certificate(as_cryptography=True)
    assert served == "CN=localhost" and cert is not None
    assert resumed_anchor_refusal(bare, cert) is None
    served, on_y = _handshake(ctx, p, b"y.example")  # (y's context, as a resumption meets it)
    assert served == "CN=y"
    refusal = resumed_anchor_refusal(on_y, cert)
    assert refusal is not None and refusal[0] == "unknown_ca"


def test_a_tenants_acl_applies_to_its_devices_only(p: support.Pki) -> None:
    """tenant.<id>.acl_file: the rules of the tenant the device's name chose; the other
    tenants and the bare name keep the listener's. A bad line names the tenant's key."""
    rules = os.path.join(p.dir, "beta.acl")
    with open(rules, "w") as f:
        f.write("topic readwrite beta/#\n")
    listener_rules = os.path.join(p.dir, "listener.acl")
    with open(listener_rules, "w") as f:
        f.write("topic readwrite #\n")
    beta = tenant_cert(p, "beta-acl", "beta.example")
    extra = tenant_lines("beta", beta, "beta.example") | {
        "tenant.beta.acl_file": rules,
        "acl_file": listener_rules,
    }
    prepared = prepare_text(support.listener_conf("t", 8883, 1883, p, extra))
    assert f"listener.ssl.t.tenant.beta.acl_file = {rules}" in format_config(prepared.config)
    material = prepared.materials["t"]
    parts = ListenerParts.__new__(ListenerParts)
    object.__setattr__(parts, "material", material)
    for tenant, topic, allowed in [
        ("beta", "beta/x", True),
        ("beta", "other/x", False),
        (None, "other/x", True),
        ("acme", "other/x", True),  # (not a tenant with rules of its own: the listener's)
    ]:
        acl = parts.acl_for(tenant)
        assert acl is not None and acl.allows(WRITE, topic, "d", "c") is allowed, (tenant, topic)
    with open(rules, "w") as f:
        f.write("nonsense beta/#\n")
    with pytest.raises(ConfigError, match="tenant.beta.acl_file: .*beta.acl:1"):
        prepare_text(support.listener_conf("t", 8883, 1883, p, extra))
