"""OCSP checking of client certificates end to end: a real `openssl ocsp` responder over the
test PKI's `openssl ca` database, the gateway under twistd, a real mosquitto, real clients."""

from __future__ import annotations

import json
import re
import ssl
import threading
from collections.abc import Iterator

import pytest

from gateway import testing as support
from gateway.testing.ocsp import OcspWorld
from tests.integration.test_operations import http, metrics

pytestmark = pytest.mark.integration

ACCEPTED = b"\x20\x02\x00\x00"
NOT_AUTHORIZED_3 = b"\x20\x02\x00\x05"
NOT_AUTHORIZED_5 = b"\x20\x03\x00\x87\x00"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OcspWorld]:
    w = OcspWorld(str(tmp_path_factory.mktemp("ocsp-clients")))
    yield w
    w.responder.stop()


def conf(world: OcspWorld, port: int, broker: int, **extra: str) -> str:
    opts = {
        "ocsp_client_check": "leaf",
        "ocsp_client_responder_url": world.responder.url,
        "ocsp_client_http_timeout": "3s",
        "ocsp_client_refresh_interval": "1s",
    }
    globals_ = extra.pop("globals", "")
    opts.update(extra)
    return support.listener_conf("oc", port, broker, world.p, opts) + globals_


def device(world: OcspWorld, name: str, register: bool = True) -> tuple[str, str]:
    cert = world.p.client(name)
    if register:
        world.ca.register(cert[0])
    return cert


def connect(
    port: int, world: OcspWorld, cert: tuple[str, str], level: int = 4, source: str = "127.0.0.1"
) -> bytes | str:
    """CONNECT over TLS: the CONNACK bytes, or the TLS error text."""
    import socket

    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        with support.client_context(world.p, cert).wrap_socket(
            raw, server_hostname="localhost"
        ) as s:
            s.sendall(support.connect_packet("oc-client", level=level))
            return support.read_exact(s, 5 if level == 5 else 4)
    except (ssl.SSLError, ConnectionError, OSError) as e:
        return str(e)


def test_good_unknown_revoked_and_a_live_session(world: OcspWorld, workdir: str) -> None:
    """A good device is held for its first answer, then admitted; the next connection uses
    the cached answer (no request). A device the CA does not know gets CONNACK 'not
    authorized' (3.1.1: 5; 5.0: 0x87) once its answer comes, and the cached 'unknown' then
    refuses its next handshake. Revoked at the CA while connected: the refresh closes its
    live session, and its next connection is refused at the handshake (certificate_revoked)."""
    broker, broker_port = support.start_mosquitto(workdir)
    port, admin = support.free_port(), support.free_port()
    gw = support.start_gateway(
        workdir, conf(world, port, broker_port, globals=f"admin.listen = {admin}\n"), "gw-oc"
    )
    good = device(world, "oc-good")
    stranger = device(world, "oc-stranger", register=False)
    stranger5 = device(world, "oc-stranger-5", register=False)
    victim = device(world, "oc-victim")
    try:
        before = world.responder.hits
        assert connect(port, world, good) == ACCEPTED
        assert world.responder.hits == before + 1
        assert connect(port, world, good) == ACCEPTED
        assert world.responder.hits == before + 1  # the cached answer
        assert connect(port, world, stranger) == NOT_AUTHORIZED_3
        assert connect(port, world, stranger5, level=5) == NOT_AUTHORIZED_5
        assert "certificate unknown" in str(connect(port, world, stranger))
        support.wait_until(lambda: "reason=ocsp_unknown" in gw.log(), 5)
        live = support.tls_connect(port, support.client_context(world.p, victim))
        live.sendall(support.connect_packet("oc-victim"))
        assert support.read_exact(live, 4) == ACCEPTED
        world.ca.revoke(victim[0])
        live.settimeout(15)
        assert live.recv(10) == b"", "the live session was closed"
        live.close()
        refused = connect(port, world, victim)
        assert "revoked" in str(refused), refused
        support.wait_until(
            lambda: re.search(r"refused oc .*reason=ocsp_revoked .*CN=oc-victim", gw.log()), 5
        )
        log = gw.log()
        assert re.search(r"closing oc .*CN=oc-victim.*: certificate revoked by a revocation", log)
        assert "oc-stranger" not in broker.log()  # refused devices never reached the broker
        scraped = metrics(admin)
        on = ("listener", "oc")
        assert scraped[("mqttgw_client_ocsp_lookups_total", (on, ("result", "hit")))] >= 1
        assert scraped[("mqttgw_client_ocsp_answers", (on, ("status", "revoked")))] == 1
        responder = (on, ("responder", world.responder.url))
        assert scraped[("mqttgw_client_ocsp_requests_total", responder)] >= 4
        refused = ("mqttgw_connections_refused_total", (on, ("reason", "ocsp_revoked")))
        assert scraped[refused] == 1
        status = json.loads(http(admin, "/status")[2])
        (listener,) = status["listeners"]
        oc = listener["client_ocsp"]
        assert oc["by_status"] == {"good": 1, "revoked": 1, "unknown": 2}, oc
        assert oc["decisions"]["held_for_ocsp"] >= 4 and oc["hit_ratio"] > 0
    finally:
        gw.stop()
        broker.stop()


@pytest.mark.parametrize("policy", ["reject", "accept"])
def test_responder_down_follows_the_policy(world: OcspWorld, workdir: str, policy: str) -> None:
    """The responder answering HTTP 500: a device without a cached answer is refused
    (reject, CONNACK 'not authorized', ocsp_unavailable) or admitted (accept); a device with
    a good answer cached is admitted either way."""
    broker, broker_port = support.start_mosquitto(workdir)
    port = support.free_port()
    gw = support.start_gateway(
        workdir,
        conf(world, port, broker_port, ocsp_client_failure_policy=policy),
        f"gw-oc-{policy}",
    )
    known = device(world, f"oc-known-{policy}")
    newcomer = device(world, f"oc-new-{policy}")
    try:
        assert connect(port, world, known) == ACCEPTED
        world.responder.mode = 500
        try:
            assert connect(port, world, known) == ACCEPTED
            outcome = connect(port, world, newcomer)
        finally:
            world.responder.mode = "ok"
        if policy == "reject":
            assert outcome == NOT_AUTHORIZED_3
            support.wait_until(lambda: "reason=ocsp_unavailable" in gw.log(), 5)
        else:
            assert outcome == ACCEPTED
    finally:
        gw.stop()
        broker.stop()


def test_bad_answers_are_refused_and_said_in_plain_words(world: OcspWorld, workdir: str) -> None:
    """tryLater, garbage, an answer signed by another CA: the device is refused with
    CONNACK 'not authorized' (policy reject) and the log says why; the gateway keeps
    serving a device whose answer is held."""
    from gateway.demo import pki
    from gateway.testing.ocsp import response, unsuccessful

    broker, broker_port = support.start_mosquitto(workdir)
    port = support.free_port()
    gw = support.start_gateway(workdir, conf(world, port, broker_port), "gw-oc-bad")
    known = device(world, "oc-bad-known")
    other_ca = pki.make_ca("some other CA")
    try:
        assert connect(port, world, known) == ACCEPTED
        cases = {
            "try-later": (unsuccessful(), "responseStatus try_later"),
            "garbage": (b"\x30\x03abc", "not an OCSP response"),
            "other-ca": (None, "no answer for serial"),
        }
        for name, (body, words) in cases.items():
            cert = device(world, f"oc-bad-{name}")
            if body is None:
                with open(cert[0], "rb") as f:
                    from cryptography import x509

                    leaf = x509.load_pem_x509_certificate(f.read())
                body = response(leaf, other_ca)
            world.responder.mode = body
            try:
                assert connect(port, world, cert) == NOT_AUTHORIZED_3, name
            finally:
                world.responder.mode = "ok"
            support.wait_until(
                lambda name=name, words=words: re.search(
                    rf"refused oc .*reason=ocsp_unavailable .*CN=oc-bad-{name}.*{words}",
                    gw.log(),
                ),
                5,
                what=name,
            )
        assert connect(port, world, known) == ACCEPTED
    finally:
        gw.stop()
        broker.stop()


def test_a_storm_asks_once_per_certificate_with_workers(world: OcspWorld, workdir: str) -> None:
    """With two workers, 12 connections of 3 devices at once, from 12 addresses: each
    device's certificate is asked about once (the master asks for every worker)."""
    broker, broker_port = support.start_mosquitto(workdir)
    port = support.free_port()
    gw = support.start_gateway(
        workdir,
        conf(world, port, broker_port, globals="workers = 2\n"),
        "gw-oc-workers",
        "serving",
    )
    devices = [device(world, f"oc-storm-{i}") for i in range(3)]
    try:
        support.wait_until(lambda: gw.log().count(") serving") >= 2, 30, what="workers")
        before = world.responder.hits
        results: list[bytes | str] = []
        threads = [
            threading.Thread(
                target=lambda i=i: results.append(
                    connect(port, world, devices[i % 3], source=f"127.0.0.{10 + i}")
                )
            )
            for i in range(12)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [ACCEPTED] * 12, results
        assert world.responder.hits - before == 3
        # The second connection of each device from another worker: no request either.
        assert connect(port, world, devices[0], source="127.0.0.30") == ACCEPTED
        assert world.responder.hits - before == 3
    finally:
        gw.stop()
        broker.stop()


@pytest.mark.parametrize("workers", ["", "workers = 2\n"])
def test_a_resumed_session_is_checked_by_ocsp(world: OcspWorld, workdir: str, workers: str) -> None:
    """Resumption skips OpenSSL's verification, not OCSP's: once a refresh learnt that the
    device is revoked (its live session closed), resuming its TLS 1.2 session is refused
    with nothing reaching the broker; with two workers too."""
    from tests.integration.test_crl import _closed, _resume

    broker, broker_port = support.start_mosquitto(workdir)
    port = support.free_port()
    name = "w" if workers else "1"
    gw = support.start_gateway(
        workdir,
        conf(world, port, broker_port, globals=workers),
        f"gw-oc-resume-{name}",
        "serving" if workers else "listener ",
    )
    victim = device(world, f"oc-resume-{name}")
    ctx = support.client_context(world.p, victim, "1.2")
    try:
        if workers:
            support.wait_until(lambda: gw.log().count(") serving") >= 2, 30, what="workers")
        live = support.tls_connect(port, ctx)
        live.sendall(support.connect_packet(f"resume-first-{name}"))
        assert support.read_exact(live, 4) == ACCEPTED
        session = live.session
        world.ca.revoke(victim[0])
        live.settimeout(15)
        assert _closed(live), "the refresh closed the live session"
        late = _resume(port, ctx, session)  # type: ignore[arg-type]
        assert late.session_reused
        try:
            late.sendall(support.connect_packet(f"resume-after-{name}"))
        except (ConnectionError, ssl.SSLError):
            pass
        assert _closed(late)
        support.wait_until(
            lambda: re.search(r"reason=ocsp_revoked .*resumed session refused", gw.log()), 5
        )
        assert f"resume-after-{name}" not in broker.log()
    finally:
        gw.stop()
        broker.stop()


def test_a_restart_keeps_admitting_from_the_kept_answers(world: OcspWorld, workdir: str) -> None:
    """With ocsp_cache.dir: the answers are written at stop and read back (validated again)
    at start; with the responder down, a device whose answer was kept is admitted, one
    without is refused (policy reject)."""
    broker, broker_port = support.start_mosquitto(workdir)
    kept = device(world, "oc-kept")
    newcomer = device(world, "oc-kept-new")
    cache = f"ocsp_cache.dir = {workdir}/ocsp-cache\n"
    try:
        port = support.free_port()
        gw = support.start_gateway(
            workdir, conf(world, port, broker_port, globals=cache), "gw-oc-kept-1"
        )
        try:
            assert connect(port, world, kept) == ACCEPTED
        finally:
            gw.stop()
        world.responder.mode = 500
        port = support.free_port()
        gw = support.start_gateway(
            workdir, conf(world, port, broker_port, globals=cache), "gw-oc-kept-2"
        )
        try:
            support.wait_until(lambda: "answer(s) restored" in gw.log(), 10)
            assert "1 answer(s) restored" in gw.log()
            assert connect(port, world, kept) == ACCEPTED
            assert connect(port, world, newcomer) == NOT_AUTHORIZED_3
        finally:
            gw.stop()
    finally:
        world.responder.mode = "ok"
        broker.stop()


@pytest.mark.parametrize("workers", ["", "workers = 2\n"])
def test_an_intermediate_sent_by_the_device(world: OcspWorld, workdir: str, workers: str) -> None:
    """cacertfile holds the root alone; devices send their intermediate. The answer is
    asked and validated against the intermediate OpenSSL verified the chain with (in a
    worker too: the master takes it from the worker's question). A resumed session (no
    chain in it) is checked through the intermediate verified in the full handshake."""
    from gateway.demo import pki
    from tests.integration.test_crl import _resume

    root_only = pki.write_ca_bundle(f"{workdir}/root-only.pem", world.p.root)
    broker, broker_port = support.start_mosquitto(workdir)
    port = support.free_port()
    name = "w" if workers else "1"
    gw = support.start_gateway(
        workdir,
        conf(world, port, broker_port, cacertfile=root_only, globals=workers),
        f"gw-oc-chain-{name}",
        "serving" if workers else "listener ",
    )
    good = device(world, f"oc-chain-good-{name}")
    stranger = device(world, f"oc-chain-stranger-{name}", register=False)
    try:
        if workers:
            support.wait_until(lambda: gw.log().count(") serving") >= 2, 30, what="workers")
        assert connect(port, world, good) == ACCEPTED
        assert connect(port, world, stranger) == NOT_AUTHORIZED_3
        ctx = support.client_context(world.p, good, "1.2")
        with support.tls_connect(port, ctx) as first:
            first.sendall(support.connect_packet("chain-first"))
            assert support.read_exact(first, 4) == ACCEPTED
            session = first.session
        again = _resume(port, ctx, session)  # type: ignore[arg-type]
        assert again.session_reused
        again.sendall(support.connect_packet("chain-resumed"))
        assert support.read_exact(again, 4) == ACCEPTED
        again.close()
    finally:
        gw.stop()
        broker.stop()
