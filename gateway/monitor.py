"""Reactor lag probe and the periodic stats line.

A LoopingCall every ``PROBE_INTERVAL`` measures how late it runs: the worst lateness in a
period is the longest the reactor was unable to serve connections. Every
``stats_log_interval`` one line per listener says what the gateway did, with that figure,
rendered from the listeners' status records; its fields are structured log keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

from gateway.status import (
    Histogram,
    ListenerStatus,
    WorkerStatus,
    render_stats_line,
    render_worker_line,
    stats_fields,
    worker_fields,
)

log = Logger()

PROBE_INTERVAL = 0.01  # fine enough to see a stall a device would notice
STALL_WARNING = 0.25  # a stall this long is logged at once
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Monitor(service.Service):
    def __init__(
        self,
        reactor: Any,
        interval: float,
        statuses: Callable[[], Iterable[ListenerStatus]],
        workers: Callable[[], Iterable[WorkerStatus]] = tuple,
    ) -> None:
        self._reactor = reactor
        self._interval = interval
        self._statuses = statuses
        self._workers = workers
        self.max_lag = 0.0  # worst lateness in the current period, seconds
        self.max_lag_ever = 0.0  # since start (the metrics' gauge)
        self.lag = Histogram(LAG_BUCKETS)  # every probe's lateness
        self.last_tick = reactor.seconds()  # /live: the reactor turns
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

    def set_interval(self, interval: float) -> None:
        """A reload changed stats_log_interval: the next line comes ``interval`` from now."""
        self._interval = interval
        if self._report is not None and self._report.running:
            self._report.stop()
            self._report.start(interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        for loop in (self._probe, self._report):
            if loop is not None and loop.running:
                loop.stop()

    def _tick(self) -> None:
        now = self._reactor.seconds()
        lag = max(0.0, now - self._expected)
        self._expected = now + PROBE_INTERVAL
        self.last_tick = now
        self.lag.observe(lag)
        if lag > self.max_lag:
            self.max_lag = lag
            if lag > self.max_lag_ever:
                self.max_lag_ever = lag
        if lag >= STALL_WARNING:
            log.warn("reactor stalled for {ms:.0f} ms", ms=lag * 1000)

    def report(self) -> None:
        try:
            lag, self.max_lag = self.max_lag, 0.0
            for status in self._statuses():
                fields = stats_fields(status, lag)
                # The text is rendered from the fields; the fields travel as structured
                # keys (a JSON log observer sees each one).
                log.info("{stats_line}", stats_line=render_stats_line(fields), **fields)
            workers = list(self._workers())
            if workers:
                fields = worker_fields(workers)
                log.info("{stats_line}", stats_line=render_worker_line(fields), **fields)
        except Exception:
            log.failure("stats report failed")
