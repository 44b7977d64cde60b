"""A certificate per server name against real clients and a real mosquitto: `openssl
s_client -servername` gets each tenant's certificate, a device verifying the tenant's host
name is relayed, other names get the listener's own certificate, and a reload adds a tenant
without touching a live session."""

from __future__ import annotations

import re
import signal
import socket
import ssl

import pytest

from gateway import testing as support
from gateway.demo import pki
from tests.integration.test_operations import metrics

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


def test_each_name_gets_its_tenants_certificate_and_a_reload_adds_one(
    pki_dir: support.Pki, workdir: str
) -> None:
    p = pki_dir
    acme = pki.issue(p.inter, "acme", server=True, names=("*.acme.example",))
    beta = pki.issue(p.inter, "beta", server=True, names=("beta.example",))
    acme_files, beta_files = acme.write(workdir, "acme"), beta.write(workdir, "beta")
    broker, broker_port = support.start_mosquitto(workdir)
    port, admin = support.free_port(), support.free_port()
    tenant = {
        "tenant.acme.server_names": "*.acme.example",
        "tenant.acme.certfile": acme_files[0],
        "tenant.acme.keyfile": acme_files[1],
    }
    conf = support.listener_conf("t", port, broker_port, p, tenant) + f"admin.listen = {admin}\n"
    gw = support.start_gateway(workdir, conf)
    try:
        assert "CN = acme" in _subject(port, p, "eu.acme.example")
        assert "CN = localhost" in _subject(port, p, "beta.example")  # not served yet
        live = _device(port, p, "eu.acme.example")
        live.sendall(support.connect_packet("acme-device"))
        assert support.read_exact(live, 4) == b"\x20\x02\x00\x00"
        with pytest.raises(ssl.SSLCertVerificationError):
            _device(port, p, "beta.example")  # the listener's own certificate does not name it

        with open(gw.log_path.removesuffix(".log") + ".conf", "a") as f:
            f.write(
                f"listener.ssl.t.tenant.beta.server_names = beta.example\n"
                f"listener.ssl.t.tenant.beta.certfile = {beta_files[0]}\n"
                f"listener.ssl.t.tenant.beta.keyfile = {beta_files[1]}\n"
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
        support.wait_until(lambda: "beta-device" in broker.log(), 10, what="the broker")
        assert re.search(
            r"accepted t .*tenant=acme transport=tls client_id='acme-device'", gw.log()
        )
        scraped = metrics(admin)
        for name in ("acme", "beta"):
            key = (("listener", "t"), ("tenant", name))
            assert scraped[("mqttgw_tenant_sessions_total", key)] == 1
    finally:
        gw.stop()
        broker.stop()
