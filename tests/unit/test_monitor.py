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
