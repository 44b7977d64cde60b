"""The reactor lag probe and the stats line."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from gateway.monitor import Monitor
from gateway.status import CrlCheckStatus, ListenerStats, ListenerStatus


def test_lag_is_measured_and_reported() -> None:
    """A late probe tick is recorded; the stats line carries it as a field and resets it."""
    clock = Clock()
    stats = ListenerStats("ext", active=3, accepted=10)
    stats.refuse("revoked")
    crl = CrlCheckStatus(held=2, counts={"revoked": 1}, sources=())
    monitor = Monitor(clock, 60, lambda: [ListenerStatus(stats.snapshot(), crl)])
    monitor.startService()
    clock.advance(0.01)
    clock.advance(0.01)
    assert monitor.max_lag == 0
    clock.advance(0.31)  # the reactor was busy for 300 ms
    assert abs(monitor.max_lag - 0.30) < 1e-6
    with capturedLogs() as events:
        monitor.report()
    lines = [e for e in events if e.get("listener") == "ext"]
    assert lines and abs(lines[0]["max_reactor_lag_ms"] - 300) < 0.01
    assert lines[0]["refused"] == {"revoked": 1}
    assert lines[0]["crls_held"] == 2 and lines[0]["crl_revoked"] == 1
    text = formatEvent(lines[0])
    assert text.startswith("stats ext: active=3 accepted=10 refused={'revoked': 1}")
    assert "max_reactor_lag_ms=300.0 crls_held=2" in text
    assert monitor.max_lag == 0
    monitor.stopService()


class FakePoller:
    """A poller whose poll takes ``waits`` seconds of the fake clock, and records calls."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.calls: list[tuple[str, tuple[object, ...]]] = []
        self.wait = 0.0

    def poll(self, *args: object) -> list[object]:
        self.calls.append(("poll", args))
        self.clock[0] += self.wait
        return []

    def register(self, *args: object) -> None:
        self.calls.append(("register", args))

    def unregister(self, *args: object) -> None:
        self.calls.append(("unregister", args))

    def modify(self, *args: object) -> None:
        self.calls.append(("modify", args))

    def fileno(self) -> int:
        return 42


def test_lag_is_measured_at_every_turn_of_a_polling_reactor() -> None:
    """With a poller, no probe wakes the reactor: each poll notes how long the loop ran since
    the previous poll returned (time spent waiting in poll is not lag, unless the wait ended
    well past its timeout: the process was not run). A stall is logged, the stats line
    carries the worst, and stopping gives the reactor its poller back."""
    now = [100.0]
    reactor = Clock()
    poller = FakePoller(now)  # select.poll-like: timeouts in milliseconds
    reactor._poller = poller  # type: ignore[attr-defined]
    stats = ListenerStats("ext")
    monitor = Monitor(
        reactor, 60, lambda: [ListenerStatus(stats.snapshot(), None)], now=lambda: now[0]
    )
    monitor.startService()
    timed = reactor._poller  # type: ignore[attr-defined]
    assert timed is not poller
    # The loop: poll (5 s idle, within its timeout: not lag), work 2 ms, poll, work 400 ms.
    poller.wait = 5.0
    timed.poll(5000)
    poller.wait = 0.0
    now[0] += 0.002
    timed.register(7, 1)
    timed.modify(7, 4)
    timed.poll(0)
    assert abs(monitor.max_lag - 0.002) < 1e-9
    now[0] += 0.4
    with capturedLogs() as events:
        timed.poll(1000)
    assert [formatEvent(e) for e in events] == ["reactor stalled for 400 ms"]
    assert abs(monitor.max_lag_ever - 0.4) < 1e-9
    # A wait for a timer 200 ms away that ends after 900 ms: the timer is 700 ms late.
    poller.wait = 0.9
    with capturedLogs() as events:
        timed.poll(200)
    assert [formatEvent(e) for e in events] == ["reactor stalled for 700 ms"]
    assert monitor.lag.snapshot().count == 5
    assert [c[0] for c in poller.calls] == ["poll", "register", "modify", "poll", "poll", "poll"]
    assert timed.fileno() == 42
    with capturedLogs() as events:
        monitor.report()
    line = [e for e in events if e.get("listener") == "ext"][0]
    assert abs(line["max_reactor_lag_ms"] - 700) < 0.01
    # /live's heartbeat: the loop proves it turns once a second, without any probe.
    reactor.advance(1.0)
    assert monitor.last_tick == reactor.seconds()
    monitor.stopService()
    assert reactor._poller is poller  # type: ignore[attr-defined]


def test_an_idle_gateway_does_not_wake_a_hundred_times_a_second() -> None:
    """On Linux's reactor the monitor adds one timer a second (and the stats line's), not a
    10 ms probe: an idle gateway sleeps."""
    from twisted.internet import epollreactor

    reactor = epollreactor.EPollReactor()
    monitor = Monitor(reactor, 3600, lambda: [])
    monitor.startService()
    try:
        delays = sorted(call.getTime() - reactor.seconds() for call in reactor.getDelayedCalls())
        assert delays and min(delays) > 0.5, delays
    finally:
        monitor.stopService()
        for call in reactor.getDelayedCalls():
            call.cancel()
        reactor._poller.close()  # type: ignore[attr-defined]
