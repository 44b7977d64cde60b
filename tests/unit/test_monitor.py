"""The reactor lag probe and the stats line."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from gateway.metrics import ListenerStats
from gateway.monitor import Monitor


def test_lag_is_measured_and_reported() -> None:
    """A late probe tick is recorded; the stats line carries it and resets it."""
    clock = Clock()
    stats = ListenerStats("ext", active=3, accepted=10)
    stats.refuse("revoked")
    monitor = Monitor(clock, 60, lambda: [stats], lambda name: {"crls_held": 2})
    monitor.startService()
    clock.advance(0.01)
    clock.advance(0.01)
    assert monitor.max_lag == 0
    clock.advance(0.31)  # the reactor was busy for 300 ms
    assert abs(monitor.max_lag - 0.30) < 1e-6
    with capturedLogs() as events:
        monitor.report()
    texts = [e for e in events if e.get("listener") == "ext"]
    assert texts and abs(texts[0]["lag"] - 300) < 0.01
    assert texts[0]["refused"] == {"revoked": 1} and texts[0]["extra"] == " crls_held=2"
    assert monitor.max_lag == 0
    monitor.stopService()
