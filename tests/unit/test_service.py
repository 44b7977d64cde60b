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
from gateway.service import make_gateway_service
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


def test_listener_status_and_port_paused_until_crl_round(p: support.Pki, tmp_path: Any) -> None:
    """The port is bound at start but accepts only once the first CRL round is over;
    status() gathers counters, CRL sources and the OCSP staple."""
    server = pki.issue(p.inter, "localhost", server=True, ocsp_url="http://ocsp.test/")
    cert, key = server.write(str(tmp_path), "srv")
    text = support.listener_conf(
        "s",
        18883,
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
    port = reactor.tcpServers[0]
    assert port[0] == 18883 and port[3] == "127.0.0.1"
    crl = ls.parts.crl
    assert crl is not None and not crl.ready.called
    assert reactor.port.reading is False  # bound, not accepting yet
    stub.flush()
    reactor.advance(config.crl.http_timeout + 0.1)
    assert crl.ready.called  # the timeout ended the first round: policy decides now
    assert reactor.port.reading is True
    status = ls.status()
    assert status.stats.listener == "s"
    assert status.crl is not None and status.crl.sources[0].last_result == "error"
    assert "timeout" in (status.crl.sources[0].last_error or "")
    assert status.ocsp is not None and status.ocsp.status is None
    assert "timeout" in (status.ocsp.last_error or "")
    ls.stopService()


def test_gateway_tree_has_listeners_and_monitor(p: support.Pki) -> None:
    """make_gateway_service builds one service per listener, plus the monitor and the sampler
    of the status history."""
    text = support.listener_conf("a", 18884, 1883, p) + support.listener_conf("b", 18885, 1884, p)
    top = make_gateway_service(prepare_text(text), MemoryReactorClock())
    names = [getattr(s, "name", None) for s in top]
    assert names[:2] == ["a", "b"] and len(names) == 4  # and the monitor, the history sampler
    assert top.monitor in list(top)
