"""One refresh scheduler for CRL sources and OCSP staples.

Each job is one thing to keep fresh (a CRL URL, a listener's staple). The scheduler ticks
on a ``LoopingCall`` of the injected clock, runs a job when it is due (never twice at once:
an in-flight run is shared), and schedules the next run from the outcome: after a success,
the refresh interval, or earlier as the held data's nextUpdate approaches (``lead`` of the
way there); after a failure, a backoff that doubles from ``RETRY_BASE`` up to the interval.
A job's run reports its outcome with ``schedule(job, outcome)`` (so that its log line can
say when the next refresh is); a run that fails unexpectedly counts as a failure.
The tick never dies: everything it calls is caught and logged.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.application.internet import backoffPolicy
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import timers

log = Logger()

TICK = 1.0  # seconds between checks of what is due; also the shortest delay
RETRY_BASE = 10.0  # first retry after a failure; doubles up to the refresh interval
# Data already past its nextUpdate (and a successful fetch brought nothing newer): the CA is
# late publishing; ask again in a minute rather than hammering it every tick.
PAST_DUE_RETRY = 60.0


def _no_jitter() -> float:
    return 0.0  # refreshes are spread by their own nextUpdates; deterministic in tests


@attrs.frozen
class Outcome:
    """What one run achieved, for scheduling: success, and the nextUpdate of the data held."""

    ok: bool
    next_update: float | None = None


def next_delay(outcome: Outcome, now: float, interval: float, failures: int, lead: float) -> float:
    """Seconds until the next run (see the module docstring)."""
    if outcome.ok:
        delay = interval
    else:  # Twisted's backoff, as the workers' restarts: RETRY_BASE doubling to the interval
        delay = backoffPolicy(RETRY_BASE, interval, 2.0, jitter=_no_jitter)(max(failures - 1, 0))
    if outcome.next_update is not None:
        until = outcome.next_update - now
        delay = min(delay, until * lead) if until > 0 else min(delay, PAST_DUE_RETRY)
    return max(delay, TICK)


@attrs.define(eq=False)
class RefreshJob:
    key: str
    run: Callable[[], defer.Deferred[None]]  # one refresh; calls schedule(); should not fail
    interval: float
    lead: float = 1.0  # refresh at this fraction of the way to the data's nextUpdate
    due: float = 0.0
    failures: int = 0  # consecutive
    next_refresh: float | None = None
    attempted: bool = False  # has finished at least one run
    in_flight: defer.Deferred[None] | None = None
    waiters: list[defer.Deferred[None]] = attrs.Factory(list)


class RefreshScheduler:
    """Runs jobs when due on ``clock``; ``on_tick`` is called every tick too."""

    def __init__(self, clock: IReactorTime, on_tick: Callable[[], None] = lambda: None) -> None:
        self._clock = clock
        self._on_tick = on_tick
        self.jobs: dict[str, RefreshJob] = {}
        self._loop: task.LoopingCall | None = None

    def _now(self) -> float:
        return self._clock.seconds()

    def add(self, job: RefreshJob) -> RefreshJob:
        self.jobs[job.key] = job
        return job

    def remove(self, key: str) -> None:
        job = self.jobs.pop(key, None)
        if job is not None and job.in_flight is not None:
            job.in_flight.cancel()

    def start(self) -> None:
        self._loop = timers.looping(self._tick, self._clock, "the refresh timer")
        timers.start(self._loop, TICK, "the refresh timer")

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for job in self.jobs.values():
            if job.in_flight is not None:
                job.in_flight.cancel()

    def run_now(self, job: RefreshJob) -> defer.Deferred[None]:
        """Run ``job`` now (or join the run in flight); fires when that run is over."""
        done: defer.Deferred[None] = defer.Deferred()
        job.waiters.append(done)
        if job.in_flight is None:
            self._run(job)
        return done

    def when_attempted(self, job: RefreshJob) -> defer.Deferred[None]:
        """Fires once the job has finished a run (at once if it already has)."""
        if job.attempted and job.in_flight is None:
            return defer.succeed(None)
        done: defer.Deferred[None] = defer.Deferred()
        job.waiters.append(done)
        return done

    def _tick(self) -> None:
        try:
            now = self._now()
            for job in list(self.jobs.values()):
                if job.in_flight is None and job.attempted and job.due <= now:
                    self._run(job)
            self._on_tick()
        except Exception:
            log.failure("refresh tick failed")

    def _run(self, job: RefreshJob) -> None:
        try:
            d = job.run()
        except Exception:
            d = defer.fail()
        # In flight until _finished runs (at once if the run completed synchronously; a
        # Deferred that is ``called`` may still wait on a chained one, so that flag won't do).
        job.in_flight = d

        def unexpected(reason: Failure) -> None:
            if not reason.check(defer.CancelledError):
                log.failure("refresh of {key} failed", reason, key=job.key)
            self.schedule(job, Outcome(ok=False))

        d.addErrback(unexpected)
        d.addCallback(self._finished, job)

    def schedule(self, job: RefreshJob, outcome: Outcome) -> float:
        """Record a run's outcome and set the job's next run; returns that time."""
        job.failures = 0 if outcome.ok else job.failures + 1
        now = self._now()
        job.due = now + next_delay(outcome, now, job.interval, job.failures, job.lead)
        job.next_refresh = job.due
        return job.due

    def _finished(self, _: None, job: RefreshJob) -> None:
        job.in_flight = None
        job.attempted = True
        waiters, job.waiters = job.waiters, []
        for waiter in waiters:
            waiter.callback(None)
