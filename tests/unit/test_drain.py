"""The paced drain (``gateway.drain``): sessions closed at drain_rate a second, oldest first,
the rest when the drain ends; each process's and listener's share of the rate."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from gateway.config.model import ConnectionLimits
from gateway.drain import drain, drain_shares, pace
from gateway.proxy.entry import Gate
from gateway.proxy.relay import ClientProtocol
from gateway.reasons import Reason
from gateway.status import ListenerStats


class Session(ClientProtocol):
    """A relayed session that ends when the gateway stops it (a second later it is gone)."""

    def __init__(self, gate: Gate, clock: Clock, n: int, stopped: list[int]) -> None:
        self.gate, self.clock, self.n, self.stopped = gate, clock, n, stopped
        self.transport = object()

    def stop(self, by: Reason, why: str) -> None:
        assert by is Reason.SHUTDOWN
        self.stopped.append(self.n)
        self.clock.callLater(0.01, self.gate.closed, self)


def sessions(count: int) -> tuple[Gate, Clock, list[int]]:
    clock, stopped = Clock(), []
    gate = Gate("x", ListenerStats("x"), ConnectionLimits(15.0, 10.0, 65536, count), clock)
    for n in range(count):
        gate.opened(Session(gate, clock, n, stopped), "")
    return gate, clock, stopped


def test_sessions_are_closed_at_the_rate_oldest_first() -> None:
    gate, clock, stopped = sessions(100)
    done = drain(gate, clock, 10.0, Reason.SHUTDOWN, "stopping", rate=50.0)
    clock.pump([0.05] * 20)  # one second
    assert 45 <= len(stopped) <= 50 and stopped == sorted(stopped)
    clock.pump([0.05] * 21)
    assert stopped == list(range(100))
    assert done.called and done.result == 100  # all gone long before the ten seconds


def test_auto_spreads_the_sessions_over_the_drain_and_zero_waits_for_its_end() -> None:
    gate, clock, stopped = sessions(100)
    drain(gate, clock, 5.0, Reason.SHUTDOWN, "stopping", rate=None)  # 100 over 4 s: 25/s
    clock.pump([0.05] * 40)  # two seconds
    assert 45 <= len(stopped) <= 50
    clock.pump([0.05] * 41)
    assert len(stopped) == 100
    gate, clock, stopped = sessions(10)
    done = drain(gate, clock, 5.0, Reason.SHUTDOWN, "stopping", rate=0.0)
    clock.pump([0.5] * 9)
    assert stopped == []
    clock.pump([0.5, 0.5])
    assert len(stopped) == 10 and done.called


@pytest.mark.parametrize(
    ("rate", "sessions", "seconds", "expected"),
    [(None, 800, 10.0, 100.0), (300.0, 5, 10.0, 300.0), (None, 5, 0.0, 0.0)],
)
def test_pace(rate: float | None, sessions: int, seconds: float, expected: float) -> None:
    assert pace(rate, sessions, seconds) == expected


def test_the_rate_is_shared_by_sessions_and_among_workers(monkeypatch: Any) -> None:
    class Listener:
        def __init__(self, count: int) -> None:
            self.gate = type("G", (), {"protocols": dict.fromkeys(range(count))})()

    listeners = {"a": Listener(300), "b": Listener(100), "c": Listener(0)}
    monkeypatch.delenv("MQTTGW_WORKERS", raising=False)
    assert drain_shares(400.0, listeners, None) == {"a": 300.0, "b": 100.0, "c": 0.0}
    monkeypatch.setenv("MQTTGW_WORKERS", "4")  # one of four workers: a quarter
    assert drain_shares(400.0, listeners, None) == {"a": 75.0, "b": 25.0, "c": 0.0}
    assert drain_shares(None, listeners, None) == dict.fromkeys(listeners)  # auto: each its own
    assert drain_shares(400.0, listeners, object()) == dict.fromkeys(listeners, 400.0)  # master
