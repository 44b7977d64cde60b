"""OCSP stapling end to end: a real `openssl ocsp` responder, `openssl s_client -status`."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from gateway import testing as support
from gateway.demo import pki
from gateway.testing.ocsp import OcspWorld, OpensslOcspResponder
from tests.integration.test_operations import http

pytestmark = pytest.mark.integration

SUCCESS = "OCSP Response Status: successful"
NO_RESPONSE = "OCSP response: no response sent"


def s_client(port: int, p: support.Pki, tls: str = "1.3", status: bool = True) -> str:
    cert = p.client(f"ocsp-client-{port}")
    result = support.s_client(port, p.ca_file, cert, tls, *(["-status"] if status else []))
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OcspWorld]:
    w = OcspWorld(str(tmp_path_factory.mktemp("ocsp-world")))
    yield w
    w.responder.stop()


@pytest.fixture(scope="module")
def stapling(
    world: OcspWorld, broker: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, int]]:
    """A gateway with an ECDSA and an RSA listener, both stapling, responder from AIA."""
    directory = str(tmp_path_factory.mktemp("gw"))
    ports = {"ec": support.free_port(), "rsa": support.free_port(), "off": support.free_port()}
    conf = world.conf("ec", ports["ec"], broker, world.server_cert("srv-ec", "ec"))
    conf += world.conf("rsa", ports["rsa"], broker, world.server_cert("srv-rsa", "rsa"))
    conf += support.listener_conf("off", ports["off"], broker, world.p)
    gw = support.start_gateway(directory, conf, ready="listener off")
    support.wait_until(lambda: gw.log().count("ocsp ") >= 2 and "status=good" in gw.log(), 20)
    yield ports
    gw.stop()


@pytest.mark.parametrize("kind", ["ec", "rsa"])
@pytest.mark.parametrize("tls", ["1.3", "1.2"])
def test_stapled_good(world: OcspWorld, stapling: dict[str, int], kind: str, tls: str) -> None:
    """s_client -status shows a successful response with Cert Status: good."""
    out = s_client(stapling[kind], world.p, tls)
    assert SUCCESS in out and "Cert Status: good" in out, out


def test_no_status_request_no_staple(world: OcspWorld, stapling: dict[str, int]) -> None:
    """A client that does not ask for status gets no staple; stapling off sends none."""
    out = s_client(stapling["ec"], world.p, status=False)
    assert "OCSP Response" not in out and "Verify return code: 0" in out
    assert NO_RESPONSE in s_client(stapling["off"], world.p)


def test_responder_down_at_start(world: OcspWorld, broker: int, workdir: str) -> None:
    """Down at start: nothing stapled without a persisted response; the persisted one otherwise."""
    cert = world.server_cert("srv-down")
    cache = os.path.join(workdir, "ocsp-cache")
    port = support.free_port()
    conf = world.conf("d", port, broker, cert, globals=f"ocsp_cache.dir = {cache}\n")
    gw = support.start_gateway(workdir, conf, "gw1")
    try:
        # 40 s: room for one retry (a first request that fails on a loaded machine is
        # retried 10 s later, after at most ocsp_refresh_http_timeout); the log says why.
        try:
            support.wait_until(lambda: os.path.exists(os.path.join(cache, "d.ocsp.der")), 40)
        except TimeoutError:
            lines = [line for line in gw.log().splitlines() if "ocsp" in line]
            raise AssertionError(
                f"no response persisted; responder hits {world.responder.hits}; "
                + "\n".join(lines[-20:])
            ) from None
    finally:
        gw.stop()
    world.responder.mode = 503
    try:
        gw2 = support.start_gateway(workdir, conf, "gw2", ready="loaded_from_disk")
        try:
            out = s_client(port, world.p)
            assert SUCCESS in out and "Cert Status: good" in out
            support.wait_until(lambda: "HTTP 503" in gw2.log())
        finally:
            gw2.stop()
        cold = world.conf("d", port, broker, cert)
        gw3 = support.start_gateway(workdir, cold, "gw3")
        try:
            support.wait_until(lambda: "nothing to staple" in gw3.log(), 20)
            assert NO_RESPONSE in s_client(port, world.p)
        finally:
            gw3.stop()
    finally:
        world.responder.mode = "ok"


def test_revoked_server_certificate_is_stapled_with_alarm(
    world: OcspWorld, broker: int, workdir: str
) -> None:
    """A revoked server certificate: the revoked status is stapled and a critical alarm logged."""
    cert = world.server_cert("srv-revoked")
    world.ca.revoke(cert[0])
    port = support.free_port()
    gw = support.start_gateway(workdir, world.conf("r", port, broker, cert))
    try:
        support.wait_until(lambda: "IS REVOKED" in gw.log(), 20)
        out = s_client(port, world.p)
        assert SUCCESS in out and "Cert Status: revoked" in out
    finally:
        gw.stop()


def test_unknown_certificate_is_not_stapled(world: OcspWorld, broker: int, workdir: str) -> None:
    """The responder does not know the certificate: 'unknown' is never stapled."""
    cert = world.server_cert("srv-unknown", register=False)
    port = support.free_port()
    gw = support.start_gateway(workdir, world.conf("u", port, broker, cert))
    try:
        support.wait_until(lambda: "unknown_status" in gw.log(), 20)
        assert NO_RESPONSE in s_client(port, world.p)
    finally:
        gw.stop()


def test_delegated_responder_and_get_method(
    world: OcspWorld, broker: int, workdir: str, tmp_path: object
) -> None:
    """A delegated responder certificate (OCSPSigning) is accepted; GET requests work."""
    delegate = pki.issue(world.p.inter, "ocsp responder", ocsp_signing=True).write(
        str(tmp_path), "delegate"
    )
    responder = OpensslOcspResponder(world.ca.dir, world.ca_cert, delegate)
    try:
        cert = world.server_cert("srv-delegated")
        port = support.free_port()
        conf = world.conf(
            "g", port, broker, cert, ocsp_responder_url=responder.url, ocsp_request_method="get"
        )
        gw = support.start_gateway(workdir, conf)
        try:
            support.wait_until(lambda: "status=good" in gw.log(), 20)
            out = s_client(port, world.p, "1.2")
            assert SUCCESS in out and "Cert Status: good" in out
            assert responder.hits >= 1
        finally:
            gw.stop()
    finally:
        responder.stop()


def test_each_tenant_certificate_gets_its_own_staple(
    world: OcspWorld, broker: int, workdir: str
) -> None:
    """Tenants on a stapling listener (here with workers: the master fetches, each worker
    staples): `openssl s_client -servername acme.example -status` gets acme's certificate
    and a successful OCSP response for it; the listener's own name gets its own; the
    status document shows acme's staple."""
    acme = pki.issue(
        world.p.inter, "acme", server=True, names=("acme.example",), ocsp_url=world.responder.url
    ).write(workdir, "acme-stapled")
    world.ca.register(acme[0])
    port, admin = support.free_port(), support.free_port()
    tenant = {
        "tenant.acme.server_names": "acme.example",
        "tenant.acme.certfile": acme[0],
        "tenant.acme.keyfile": acme[1],
    }
    cache = os.path.join(workdir, "ocsp-tenants")
    conf = world.conf(
        "s", port, broker, world.server_cert("srv-tenants"), globals=f"ocsp_cache.dir = {cache}\n"
    )
    conf += "".join(f"listener.ssl.s.{k} = {v}\n" for k, v in tenant.items())
    conf += f"workers = 2\nadmin.listen = {admin}\n"
    gw = support.start_gateway(workdir, conf, "gw-tenant-staples")
    try:
        support.wait_until(lambda: gw.log().count("status=good") >= 2, 20, what="two staples")
        cert = world.p.client("ocsp-tenant-client")

        def asked(*name: str) -> str:
            out = support.s_client(port, world.p.ca_file, cert, "1.3", "-status", *name)
            return out.stdout + out.stderr

        support.wait_until(lambda: SUCCESS in asked("-servername", "acme.example"), 10)
        out = asked("-servername", "acme.example")
        assert "depth=0 O = mqttgw test, CN = acme" in out and "Cert Status: good" in out, out
        own = asked()
        assert SUCCESS in own and "CN = localhost" in own and "Cert Status: good" in own
        doc = json.loads(http(admin, "/status")[2])
        (t,) = doc["listeners"][0]["tenants"]
        assert t["ocsp"]["status"] == "good" and t["ocsp"]["serial"] in out.replace(":", "")
        support.wait_until(lambda: os.path.exists(os.path.join(cache, "s+acme.ocsp.der")), 10)
    finally:
        gw.stop()
