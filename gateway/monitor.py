"""Reactor lag and the periodic stats line.

Reactor lag is how long the event loop ran without looking at its sockets: the longest such
stretch in a period is the longest a ready device waited to be served. On a reactor with a
poller (epoll, poll: the reactors of Linux) it is measured at every turn of the loop, at no
cost while idle: the poller is wrapped (``gateway.twisted_native.time_poller``, the one
private name this takes, and why), and each poll notes how long it has been since the
previous one returned. Elsewhere (a test's Clock, another reactor) a LoopingCall every
``PROBE_INTERVAL`` measures how late it runs. That probe cost every process 1.6 % of a CPU
doing nothing (a hundred wake-ups a second) and 3 % of the handshakes a worker could do.

Every ``stats_log_interval`` one line per listener says what the gateway did, with the worst
lag, rendered from the listeners' status records; its fields are structured log keys.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from twisted.application import service
from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gateway import timers
from gateway.stats_line import render_stats_line, render_worker_line, stats_fields, worker_fields
from gateway.status import Histogram, ListenerStatus, WorkerStatus
from gateway.twisted_native import time_poller

LIVE_LIMIT = 5.0  # seconds without a turn of the event loop: /live fails
log = Logger()

PROBE_INTERVAL = 0.01  # fine enough to see a stall a device would notice
HEARTBEAT = 1.0  # with a timed poller: how often the loop proves it turns (for /live)
LATE_WAKE = 0.005  # a timed wait that ends later than this past its timeout is lag
STALL_WARNING = 0.25  # a stall this long is logged at once
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class TimedPoller:
    """Stands in for a reactor's poller (``select.epoll``, or ``select.poll`` whose timeouts
    are in milliseconds: ``unit``): each ``poll`` first tells ``busy`` how long the reactor
    ran since the previous poll returned. A poll that found nothing and came back later than
    its timeout (the process was not run: CPU starvation, SIGSTOP, a paused VM) tells how
    late: a timer the reactor waited for was that late. The calls the reactor makes on every
    connection go straight to the real poller."""

    def __init__(
        self,
        poller: Any,
        busy: Callable[[float], None],
        now: Callable[[], float],
        unit: float = 1.0,
    ) -> None:
        self.poller = poller
        self._busy = busy
        self._now = now
        self._unit = unit
        self._returned = now()
        self.register = poller.register
        self.unregister = poller.unregister
        self.modify = poller.modify

    def poll(self, *args: Any) -> Any:
        now = self._now
        start = now()
        self._busy(start - self._returned)
        try:
            events = self.poller.poll(*args)
        finally:
            self._returned = now()
        timeout = args[0] if args else None
        if not events and timeout is not None and timeout >= 0:
            late = self._returned - start - timeout * self._unit
            if late > LATE_WAKE:
                self._busy(late)
        return events

    def __getattr__(self, name: str) -> Any:  # close, fileno, ...
        return getattr(self.poller, name)


class Monitor(service.Service):
    def __init__(
        self,
        reactor: IReactorTime,
        interval: float,
        statuses: Callable[[], Iterable[ListenerStatus]],
        workers: Callable[[], Iterable[WorkerStatus]] = tuple,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reactor = reactor
        self._interval = interval
        self._statuses = statuses
        self._workers = workers
        self._now = now
        self.max_lag = 0.0  # worst lag in the current period, seconds
        self.max_lag_ever = 0.0  # since start (the metrics' gauge)
        self.lag = Histogram(LAG_BUCKETS)  # every turn's (or every probe's) lag
        self.last_tick = reactor.seconds()  # /live: the reactor turns
        self._expected = 0.0
        self._probe: task.LoopingCall | None = None
        self._report: task.LoopingCall | None = None
        self._restore: Callable[[], None] | None = None  # gives the reactor its poller back

    def startService(self) -> None:
        super().startService()
        self._restore = time_poller(
            self._reactor, lambda poller, unit: TimedPoller(poller, self._busy, self._now, unit)
        )
        if self._restore is not None:
            self._probe = timers.looping(self._heartbeat, self._reactor, "the heartbeat")
            timers.start(self._probe, HEARTBEAT, "the heartbeat")
        else:
            self._expected = self._reactor.seconds() + PROBE_INTERVAL
            self._probe = timers.looping(self._tick, self._reactor, "the lag probe")
            timers.start(self._probe, PROBE_INTERVAL, "the lag probe")
        self._report = timers.looping(self.report, self._reactor, "the stats line")
        timers.start(self._report, self._interval, "the stats line")

    def set_interval(self, interval: float) -> None:
        """A reload changed stats_log_interval: the next line comes ``interval`` from now."""
        self._interval = interval
        if self._report is not None and self._report.running:
            self._report.stop()
            timers.start(self._report, interval, "the stats line")

    def stopService(self) -> None:
        super().stopService()
        for loop in (self._probe, self._report):
            if loop is not None and loop.running:
                loop.stop()
        restore, self._restore = self._restore, None
        if restore is not None:
            restore()

    def alive(self) -> tuple[bool, str]:
        """The reactor turns: the heartbeat (every second) ran in the last ``LIVE_LIMIT``."""
        quiet = self._reactor.seconds() - self.last_tick
        if quiet > LIVE_LIMIT:
            return False, f"the event loop has not turned for {quiet:.1f}s"
        return True, "alive"

    def _heartbeat(self) -> None:
        self.last_tick = self._reactor.seconds()

    def _tick(self) -> None:
        now = self._reactor.seconds()
        lag = max(0.0, now - self._expected)
        self._expected = now + PROBE_INTERVAL
        self.last_tick = now
        self._busy(lag)

    def _busy(self, lag: float) -> None:
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
