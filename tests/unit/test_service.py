"""The service tree: listeners, their CRL and OCSP services, one status object each."""

from __future__ import annotations

from typing import Any

import pytest
from treq.testing import RequestTraversalAgent
from twisted.internet.testing import MemoryReactorClock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from gateway import testing as support
from gateway.demo import pki
from gateway.reasons import Reason
from gateway.tap import make_gateway_service
from gateway.testing import InlineProcessor, prepare_text


class Hanging(Resource):
    """A CA that never answers."""

    isLeaf = True

    def render_GET(self, request: Any) -> Any:
        return NOT_DONE_YET

    render_POST = render_GET


class Port:
    def __init__(self) -> None:
        self.reading = True

    def stopReading(self) -> None:  # noqa: N802
        self.reading = False

    def startReading(self) -> None:  # noqa: N802
        self.reading = True

    def stopListening(self) -> None:  # noqa: N802
        pass


class Reactor(MemoryReactorClock):
    """A memory reactor whose listening ports can be paused, as real TCP ports can."""

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:  # noqa: N802
        super().listenTCP(port, factory, backlog, interface)
        self.port = Port()
        return self.port


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> support.Pki:
    return support.make_pki(str(tmp_path_factory.mktemp("pki")))


def _ports(listener: Any) -> list[Any]:
    """The listening ports of a listener service's port services."""
    return [s.port for s in listener if getattr(s, "port", None) is not None]


def test_listener_status_and_port_paused_until_crl_round(p: support.Pki, tmp_path: Any) -> None:
    """The port is bound at start but accepts only once the first CRL round is over;
    status() gathers counters, CRL sources and the OCSP staple."""
    server = pki.issue(p.inter, "localhost", server=True, ocsp_url="http://ocsp.test/")
    cert, key = server.write(str(tmp_path), "srv")
    number = support.free_port()  # (the listener's port is a real socket on a memory reactor)
    text = support.listener_conf(
        "s",
        number,
        1883,
        p,
        {
            "certfile": cert,
            "keyfile": key,
            "enable_crl_cache": "true",
            "crl_cache_urls": "http://ca.test/x.crl",
            "enable_ocsp_stapling": "true",
        },
    )
    prepared = prepare_text(text)
    config = prepared.config.listener("s")
    assert config.crl is not None
    reactor = Reactor()
    stub = RequestTraversalAgent(Hanging())
    top = make_gateway_service(prepared, reactor, http_agent=stub, crl_processor=InlineProcessor())
    ls = top.listeners["s"]
    ls.privilegedStartService()
    ls.startService()
    (port,) = _ports(ls)
    assert (port.getHost().host, port.getHost().port) == ("127.0.0.1", number)
    crl = ls.parts.crl
    assert crl is not None and not crl.ready.called
    assert port not in reactor.getReaders()  # bound, not accepting yet
    stub.flush()
    reactor.advance(config.crl.http_timeout + 0.1)
    assert crl.ready.called  # the timeout ended the first round: policy decides now
    assert port in reactor.getReaders()
    status = ls.status()
    assert status.stats.listener == "s"
    assert status.crl is not None and status.crl.sources[0].last_result == "error"
    assert "timeout" in (status.crl.sources[0].last_error or "")
    assert status.ocsp is not None and status.ocsp.status is None
    assert "timeout" in (status.ocsp.last_error or "")
    ls.stopService()


def test_gateway_tree_has_listeners_and_monitor(p: support.Pki) -> None:
    """make_gateway_service builds one service per listener, plus the monitor, the sampler
    of the status history, the expiry check and the file watcher (watch_files)."""
    text = support.listener_conf("a", 18884, 1883, p) + support.listener_conf("b", 18885, 1884, p)
    top = make_gateway_service(prepare_text(text), MemoryReactorClock())
    names = [getattr(s, "name", None) for s in top]
    # and the monitor, the history sampler, the daily check of certificate expiry
    assert names[:2] == ["a", "b"] and len(names) == 6
    assert top.monitor in list(top) and names[-1] == "file-watcher"
    off = make_gateway_service(prepare_text(text + "watch_files = false\n"), MemoryReactorClock())
    assert off.files is None and len(list(off)) == 5


def test_a_server_certificate_that_expires_in_five_days(p: support.Pki, tmp_path: Any) -> None:
    """The gateway's own certificate, 5 days from its notAfter: an ERROR problem (exit 2 of
    mqttgw status), a line in mqttgw status with the days left, its notAfter in
    mqttgw_certificate_expiry_timestamp_seconds, and an error line in the log at start."""
    from prometheus_client.exposition import generate_latest
    from twisted.logger import capturedLogs, formatEvent

    from gateway.admin.document import document
    from gateway.admin.metrics import registry_for
    from gateway.admin.terminal import render_text

    server = pki.issue(p.inter, "localhost", server=True, valid_days=6)  # from a day ago
    cert, key = server.write(str(tmp_path), "short")
    text = support.listener_conf("s", 18886, 1883, p, {"certfile": cert, "keyfile": key})
    reactor = MemoryReactorClock()
    reactor.advance(server.cert.not_valid_after_utc.timestamp() - 5 * 86400)
    top = make_gateway_service(prepare_text(text), reactor)
    with capturedLogs() as events:
        top.check_certificates()
    lines = [formatEvent(e) for e in events]
    assert any("certificate server of listener s" in t and "expires in 5 days" in t for t in lines)
    doc = document(top.status())
    (problem,) = [x for x in doc["problems"] if "certificate" in x["what"]]
    assert problem["severity"] == "error" and "expires in 5.0 days" in problem["what"]
    listener = doc["listeners"][0]
    assert listener["certificates"][0]["role"] == "server"
    assert listener["certificates"][0]["days_left"] == 5.0
    assert "(5 days left)" in render_text(doc)
    exposition = generate_latest(registry_for(top.status)).decode()
    expected = server.cert.not_valid_after_utc.timestamp()
    (line,) = [x for x in exposition.splitlines() if x.startswith("mqttgw_certificate_expiry")]
    assert 'listener="s"' in line and 'role="server"' in line
    assert float(line.rsplit(" ", 1)[1]) == expected


def test_ready_only_when_a_good_device_could_get_in(p: support.Pki) -> None:
    """A listener whose port accepts but cannot decide its CAs' certificates (no CRL held:
    the CA's server down at start, crl_expired_policy = reject) is not ready, and says
    which CA and which source fails; with the CRLs of every CA of the bundle in, it is;
    crl_expired_policy = accept, or a CRL fetched when a device names it, is ready without."""
    import time

    import attrs
    from twisted.internet.task import Clock

    from gateway.observe import undecided
    from gateway.revocation.crl import load
    from gateway.revocation.crl_cache import CrlCache
    from gateway.status import CrlSourceStatus
    from gateway.testing.crl import crl_der

    text = support.listener_conf(
        "s",
        18887,
        1883,
        p,
        {"enable_crl_cache": "true", "crl_cache_urls": "http://ca.test/x.crl"},
    )
    prepared = prepare_text(text)
    settings = prepared.config.listener("s").crl
    cas = prepared.materials["s"].ca_certs
    assert settings is not None and len(cas) == 2  # the root and the devices CA
    clock = Clock()
    clock.advance(time.time())
    cache = CrlCache(clock, 0.0)
    down = CrlSourceStatus(
        "http://ca.test/x.crl",
        False,
        1.0,
        "error",
        "connect: connection refused",
        1,
        None,
        None,
        (),
    )
    why = undecided(cache, cas, settings, (down,))
    assert why.count("no CRL held") == 2 and "failing: http://ca.test/x.crl (connect" in why
    for ca, url in ((p.inter, "d"), (p.root, "r")):
        (crl,) = load(crl_der(ca, [77]), list(cas), clock.seconds())
        cache.install(crl, url)
    assert undecided(cache, cas, settings, (down,)) == ""
    assert (
        undecided(CrlCache(clock, 0.0), cas, attrs.evolve(settings, expired_policy="accept")) == ""
    )
    assert undecided(CrlCache(clock, 0.0), cas, attrs.evolve(settings, from_cert=True)) == ""
    clock.advance(2 * 86400)  # both CRLs past their nextUpdate
    assert undecided(cache, cas, settings).count("past its nextUpdate") == 2


def test_the_hour_of_history() -> None:
    """The ring buffer keeps a fixed number of samples; the series are per interval."""
    from gateway.history import History, series
    from gateway.status import GatewayStatus, ListenerStats, ListenerStatus

    history = History(capacity=3)
    stats = ListenerStats("s")
    for i in range(5):
        stats.accepted += 2
        stats.active = i
        stats.refuse(Reason.REVOKED)
        status = GatewayStatus(
            "v", "c", 0.0, 10.0 * i, (ListenerStatus(stats.snapshot()),), 0, None
        )
        history.record(status)
    assert len(history.snapshot()) == 3
    s = series(history.snapshot())
    assert s["accepted"] == [2, 2] and s["refused"] == {"revoked": [1, 1]}
    assert s["active"] == [3, 4] and s["ago"] == [10.0, 0.0]
