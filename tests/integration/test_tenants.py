"""A certificate per server name against real clients and a real mosquitto: `openssl
s_client -servername` gets each tenant's certificate, a device verifying the tenant's host
name is relayed, other names get the listener's own certificate, and a reload adds a tenant
without touching a live session."""

from __future__ import annotations

import json
import re
import signal
import socket
import ssl
from typing import Any

import pytest

from gateway import testing as support
from gateway.demo import pki
from gateway.testing.crl import CrlHttpServer, OpensslCA
from tests.integration.test_operations import http, metrics

pytestmark = pytest.mark.integration


def _subject(port: int, p: support.Pki, name: str) -> str:
    out = support.s_client(port, p.ca_file, p.client("sni-client"), "1.3", "-servername", name)
    line = next(line for line in out.stdout.splitlines() if line.startswith("subject="))
    return line.removeprefix("subject=").strip()


def _device(port: int, p: support.Pki, host: str) -> ssl.SSLSocket:
    """A device that verifies ``host`` against the certificate it is served."""
    ctx = support.client_context(p, p.client("sni-device"))  # (check_hostname on)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname=host)


def _connack5(sock: ssl.SSLSocket) -> int:
    """An MQTT 5 CONNACK's reason code."""
    head = support.read_exact(sock, 2)
    assert head[0] == 0x20, head
    return support.read_exact(sock, head[1])[1]


def test_each_name_gets_its_tenants_certificate_and_a_reload_adds_one(
    pki_dir: support.Pki, workdir: str
) -> None:
    p = pki_dir
    acme = pki.issue(p.inter, "acme", server=True, names=("*.acme.example",))
    beta = pki.issue(p.inter, "beta", server=True, names=("beta.example",))
    acme_files, beta_files = acme.write(workdir, "acme"), beta.write(workdir, "beta")
    broker, broker_port = support.start_mosquitto(workdir)
    beta_broker, beta_port = support.start_mosquitto(workdir)
    port, admin = support.free_port(), support.free_port()
    loc = pki.issue(p.inter, "loc", server=True, names=("localhost",)).write(workdir, "loc")
    tenant = {
        "tenant.acme.server_names": "*.acme.example",
        "tenant.acme.certfile": acme_files[0],
        "tenant.acme.keyfile": acme_files[1],
        # a tenant serving the name mosquitto_pub can reach (and verifies), on beta's broker
        "tenant.loc.server_names": "localhost",
        "tenant.loc.certfile": loc[0],
        "tenant.loc.keyfile": loc[1],
        "tenant.loc.upstream": f"127.0.0.1:{beta_port}",
    }
    conf = support.listener_conf("t", port, broker_port, p, tenant) + f"admin.listen = {admin}\n"
    gw = support.start_gateway(workdir, conf)
    try:
        assert "CN = acme" in _subject(port, p, "eu.acme.example")
        cert, key = p.client("mosq-loc")
        pub = support.run(
            ["mosquitto_pub", "-h", "localhost", "-p", str(port), "--cafile", p.ca_file]
            + ["--cert", cert, "--key", key, "-t", "t/loc", "-m", "x", "-i", "mosq-loc"]
        )
        assert pub.returncode == 0, pub.stderr  # (its host name verified against loc's)
        support.wait_until(lambda: "mosq-loc" in beta_broker.log(), 5, what="loc's broker")
        assert "CN = loc" in _subject(port, p, "localhost") and "mosq-loc" not in broker.log()
        assert "CN = localhost" in _subject(port, p, "beta.example")  # not served yet
        live = _device(port, p, "eu.acme.example")
        live.sendall(support.connect_packet("acme-device", level=5))
        assert _connack5(live) == 0
        with pytest.raises(ssl.SSLCertVerificationError):
            _device(port, p, "beta.example")  # the listener's own certificate does not name it

        with open(gw.log_path.removesuffix(".log") + ".conf", "a") as f:
            f.write(
                f"listener.ssl.t.tenant.beta.server_names = beta.example\n"
                f"listener.ssl.t.tenant.beta.certfile = {beta_files[0]}\n"
                f"listener.ssl.t.tenant.beta.keyfile = {beta_files[1]}\n"
                f"listener.ssl.t.tenant.beta.upstream = 127.0.0.1:{beta_port}\n"
            )
        gw.proc.send_signal(signal.SIGHUP)
        support.wait_until(lambda: "reload applied" in gw.log(), 10, what="reload")
        assert "tenants" in gw.log()
        assert "CN = beta" in _subject(port, p, "beta.example")
        with _device(port, p, "beta.example") as device:
            device.sendall(support.connect_packet("beta-device"))
            assert support.read_exact(device, 4) == b"\x20\x02\x00\x00"
        live.sendall(b"\xc0\x00")  # the acme session lived through the reload
        assert support.read_exact(live, 2) == b"\xd0\x00"
        live.close()
        support.wait_until(lambda: "beta-device" in beta_broker.log(), 10, what="b's broker")
        assert "beta-device" not in broker.log()  # its own broker, not the listener's
        assert "acme-device" in broker.log() and "acme-device" not in beta_broker.log()
        assert re.search(
            r"accepted t .*tenant=acme transport=tls client_id='acme-device'", gw.log()
        )
        scraped = metrics(admin)
        for name in ("acme", "beta"):
            key = (("listener", "t"), ("tenant", name))
            assert scraped[("mqttgw_tenant_sessions_total", key)] == 1
        # Disabled at the next reload: its live session closed (MQTT 5: 0x98), its devices
        # refused; beta's session goes on.
        other = _device(port, p, "beta.example")
        other.sendall(support.connect_packet("beta-live"))
        assert support.read_exact(other, 4) == b"\x20\x02\x00\x00"
        acme_live = _device(port, p, "eu.acme.example")
        acme_live.sendall(support.connect_packet("acme-live", level=5))
        assert _connack5(acme_live) == 0
        with open(gw.log_path.removesuffix(".log") + ".conf", "a") as f:
            f.write("listener.ssl.t.tenant.acme.enabled = false\n")
        gw.proc.send_signal(signal.SIGHUP)
        acme_live.settimeout(10)
        assert support.read_exact(acme_live, 4) == b"\xe0\x02\x98\x00"
        with _device(port, p, "eu.acme.example") as refused:
            refused.sendall(support.connect_packet("acme-after"))
            assert refused.recv(4) == b""
        support.wait_until(lambda: "reason=tenant_disabled" in gw.log(), 5, what="the refusal")
        other.sendall(b"\xc0\x00")
        assert support.read_exact(other, 2) == b"\xd0\x00"
        other.close()
    finally:
        gw.stop()
        broker.stop()
        beta_broker.stop()


@pytest.mark.parametrize("tls", ["1.3", "1.2"])
def test_a_tenants_own_cas_hold_and_its_sessions_do_not_resume_on_another_name(
    pki_dir: support.Pki, workdir: str, tls: str
) -> None:
    """Two tenants with their own device CAs: a device is served on its tenant's name only,
    and a session it resumes on the other tenant's name is closed before its CONNECT is
    answered (OpenSSL does not verify a resumed session; the gateway does)."""
    p = pki_dir
    cas, files, devices = {}, {}, {}
    conf_extra: dict[str, str] = {}
    for t in ("a", "b"):
        cas[t] = pki.make_ca(f"tenant {t} devices CA")
        ca_file = pki.write_ca_bundle(f"{workdir}/{t}-ca.pem", cas[t])
        files[t] = pki.issue(p.inter, t, server=True, names=(f"{t}.example",)).write(workdir, t)
        devices[t] = pki.issue(cas[t], f"{t}-device").write(workdir, f"{t}-device")
        conf_extra |= {
            f"tenant.{t}.server_names": f"{t}.example",
            f"tenant.{t}.certfile": files[t][0],
            f"tenant.{t}.keyfile": files[t][1],
            f"tenant.{t}.cacertfile": ca_file,
        }
    conf_extra["tenant.a.match_ca"] = f"{workdir}/a-ca.pem"  # a's devices, sending no name
    broker, broker_port = support.start_mosquitto(workdir)
    port = support.free_port()
    gw = support.start_gateway(
        workdir, support.listener_conf("t", port, broker_port, p, conf_extra), f"gw-own-{tls}"
    )
    ctx = support.client_context(p, devices["a"], tls)

    def attempt(host: str, session: ssl.SSLSession | None = None) -> tuple[bytes, Any]:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            s = ctx.wrap_socket(raw, server_hostname=host, session=session)
            s.sendall(support.connect_packet(f"a-on-{host}"))
            got = s.recv(4)
            s.recv(0)
            return got, s
        except (ssl.SSLError, ConnectionError):
            return b"", None

    try:
        got, first = attempt("a.example")
        assert got == b"\x20\x02\x00\x00"
        session = first.session
        first.recv(0) if tls == "1.2" else None
        first.close()
        assert attempt("b.example")[0] == b""  # its certificate is not of b's CAs
        resumed, s = attempt("a.example", session)
        assert resumed == b"\x20\x02\x00\x00"  # (resumed or not: its own name serves it)
        got, crossed = attempt("b.example", session)
        support.wait_until(lambda: gw.log().count("a-on-") >= 3, 5, what="the log")
        log = gw.log()
        if got:
            # TLS 1.2: OpenSSL resumes a session under the name it was made for (it reports
            # that name to the servername callback): the device stays tenant a's, judged by
            # a's CAs, never b's.
            assert tls == "1.2"
            assert re.search(r"accepted t .*tenant=a .*'a-on-b.example'.*resumed=yes", log)
        else:
            assert "a-on-b.example" not in broker.log()
        assert not re.search(r"accepted t .*tenant=b", log)  # a's device never served as b's
        assert re.search(r"refused t .*tenant=b subject=CN=a-device", log)  # (on b's name)
        # No server name (an IP address): the listener's own certificate; match_ca makes
        # the device a's.
        got, bare = attempt("127.0.0.1")
        assert got == b"\x20\x02\x00\x00"
        support.wait_until(
            lambda: "tenant=a transport=tls client_id='a-on-127.0.0.1'" in gw.log(), 5
        )
    finally:
        gw.stop()
        broker.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_each_tenant_has_its_own_crls_policy_and_identity(
    pki_dir: support.Pki, workdir: str, workers: int
) -> None:
    """Two tenants with their own CAs under CRL checking, one gateway, one mosquitto:
        tenant a's CRL (from its own source, made by `openssl ca -gencrl`) refuses its revoked
        device at the handshake; tenant b's CRL server is down, and b's own
        crl_expired_policy = accept serves its device (its client id taken from its
        certificate, b's own peer_cert_as_clientid); the listener's own devices stay refused by
        the listener's reject. The refusals are counted per tenant. With workers, the master
    fetches every tenant's CRLs and each worker judges by them."""
    p = pki_dir
    a_ca = OpensslCA.create(f"{workdir}/a-ca", pki.make_ca("tenant a devices CA (crl)"))
    a_good = pki.issue(a_ca.issued, "a-good").write(workdir, "a-good")
    a_bad = pki.issue(a_ca.issued, "a-bad").write(workdir, "a-bad")
    a_ca.revoke(a_bad[0])
    b_ca = pki.make_ca("tenant b devices CA (crl)")
    b_device = pki.issue(b_ca, "b-device").write(workdir, "b-device")
    crls = CrlHttpServer()
    crls.routes["/a.crl"] = lambda: (200, a_ca.gencrl())
    crls.routes["/b.crl"] = lambda: (503, b"down")
    crls.routes["/listener.crl"] = lambda: (503, b"down")
    extra = {"enable_crl_cache": "true", "crl_cache_urls": crls.url("/listener.crl")}
    for t, ca_file in (("a", f"{a_ca.dir}/ca.pem"), ("b", f"{workdir}/b-ca.pem")):
        files = pki.issue(p.inter, t, server=True, names=(f"{t}.example",)).write(workdir, t)
        extra |= {
            f"tenant.{t}.server_names": f"{t}.example",
            f"tenant.{t}.certfile": files[0],
            f"tenant.{t}.keyfile": files[1],
            f"tenant.{t}.cacertfile": ca_file,
            f"tenant.{t}.crl_cache_urls": crls.url(f"/{t}.crl"),
        }
    pki.write_ca_bundle(f"{workdir}/b-ca.pem", b_ca)
    extra |= {"tenant.b.crl_expired_policy": "accept", "tenant.b.peer_cert_as_clientid": "cn"}
    broker, broker_port = support.start_mosquitto(workdir)
    port, admin = support.free_port(), support.free_port()
    conf = support.listener_conf("t", port, broker_port, p, extra) + f"admin.listen = {admin}\n"
    gw = support.start_gateway(workdir, conf + f"workers = {workers}\n", f"gw-crls-{workers}")

    def connack(device: tuple[str, str], host: str, client_id: str) -> bytes:
        ctx = support.client_context(p, device)
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            with ctx.wrap_socket(raw, server_hostname=host) as s:
                s.sendall(support.connect_packet(client_id))
                return s.recv(4)
        except (ssl.SSLError, ConnectionError):
            return b""

    try:
        assert connack(a_good, "a.example", "a-good") == b"\x20\x02\x00\x00"
        assert connack(a_bad, "a.example", "a-bad") == b""
        assert connack(b_device, "b.example", "claimed-id") == b"\x20\x02\x00\x00"
        assert connack(p.client("listener-device"), "127.0.0.1", "own") == b""
        support.wait_until(lambda: "as b-device" in broker.log(), 5, what="b's session")
        assert "claimed-id" not in broker.log() and "a-bad" not in broker.log()
        support.wait_until(lambda: "reason=crl_missing" in gw.log(), 5, what="the refusals")
        log = gw.log()
        assert re.search(r"refused t .*reason=revoked tenant=a subject=CN=a-bad", log), log[-3000:]
        assert re.search(r"refused t .*reason=crl_missing subject=", log)  # (the listener's)
        refused = "mqttgw_tenant_refused_total"
        revoked = (refused, (("listener", "t"), ("reason", "revoked"), ("tenant", "a")))
        support.wait_until(lambda: metrics(admin).get(revoked) == 1, 5, what="the counts")
        got = metrics(admin)
        assert not any(k[0] == refused and ("tenant", "b") in k[1] for k in got)
        doc = json.loads(http(admin, "/status")[2])
        (listener,) = doc["listeners"]
        a, b = listener["tenants"]
        assert (a["id"], a["sessions"], a["refused"]) == ("a", 1, {"revoked": 1})
        assert a["admits_devices"] and a["crl_sources"][0]["crls_held"] == 1
        assert (b["sessions"], b["crl_expired_policy"], b["admits_devices"]) == (1, "accept", True)
        assert "503" in b["crl_sources"][0]["last_error"]
        whats = [p["what"] for p in doc["problems"]]
        assert any(w.startswith("its own devices would be refused") for w in whats), whats
        page = http(admin, "/")[2].decode()
        assert "<h3>Tenants</h3>" in page and "revoked=1" in page
    finally:
        gw.stop()
        broker.stop()
        crls.stop()
