"""Reactor lag probe and the periodic stats line.

A LoopingCall every 10 ms measures how late it runs: the worst lateness in a period is the
longest the reactor was unable to serve connections. Every ``stats_log_interval`` one line
per listener says what the gateway did, with that figure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

from gateway.metrics import ListenerStats

log = Logger()

PROBE_INTERVAL = 0.01
STALL_WARNING = 0.25  # a stall this long is logged at once


class Monitor(service.Service):
    def __init__(
        self,
        reactor: Any,
        interval: float,
        stats: Callable[[], Iterable[ListenerStats]],
        extra: Callable[[str], dict[str, Any]] = lambda name: {},
    ) -> None:
        self._reactor = reactor
        self._interval = interval
        self._stats = stats
        self._extra = extra
        self.max_lag = 0.0  # worst lateness in the current period, seconds
        self._expected = 0.0
        self._probe: task.LoopingCall | None = None
        self._report: task.LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._expected = self._reactor.seconds() + PROBE_INTERVAL
        self._probe = task.LoopingCall(self._tick)
        self._probe.clock = self._reactor
        self._probe.start(PROBE_INTERVAL, now=False)
        self._report = task.LoopingCall(self.report)
        self._report.clock = self._reactor
        self._report.start(self._interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        for loop in (self._probe, self._report):
            if loop is not None and loop.running:
                loop.stop()

    def _tick(self) -> None:
        now = self._reactor.seconds()
        lag = max(0.0, now - self._expected)
        self._expected = now + PROBE_INTERVAL
        if lag > self.max_lag:
            self.max_lag = lag
        if lag >= STALL_WARNING:
            log.warn("reactor stalled for {ms:.0f} ms", ms=lag * 1000)

    def report(self) -> None:
        try:
            lag_ms = self.max_lag * 1000
            self.max_lag = 0.0
            for stats in self._stats():
                snap = stats.snapshot()
                log.info(
                    "stats {listener}: active={active} accepted={accepted} refused={refused} "
                    "bytes_in={bytes_in} bytes_out={bytes_out} max_reactor_lag_ms={lag:.1f}"
                    "{extra}",
                    lag=lag_ms,
                    extra="".join(f" {k}={v}" for k, v in self._extra(stats.name).items()),
                    **snap,
                )
        except Exception:
            log.failure("stats report failed")
