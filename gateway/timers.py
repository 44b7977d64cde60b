"""Periodic work that never dies: Twisted's ``LoopingCall`` stops for good when its call
raises or its Deferred fails, and a ``TimerService`` with it. Every periodic call of the
gateway goes through ``guarded``: a failure is logged (``log.failure``, with what it was)
and the timer keeps going; ``start`` adds an errback to the loop's Deferred as well, so a
loop that ends unexpectedly is never silent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


def guarded(f: Callable[[], Any], what: str) -> Callable[[], Any]:
    """``f``, its exceptions and failed Deferreds logged instead of raised."""

    def failed(failure: Failure) -> None:
        log.failure("{what} failed (it runs again at its next turn)", failure, what=what)

    def call() -> Any:
        try:
            result = f()
        except Exception:
            failed(Failure())
            return None
        if isinstance(result, defer.Deferred):
            return result.addErrback(failed)
        return result

    return call


def looping(f: Callable[[], Any], clock: Any, what: str) -> task.LoopingCall:
    """A LoopingCall of ``guarded(f)`` on ``clock`` (not started)."""
    loop = task.LoopingCall(guarded(f, what))
    loop.clock = clock
    return loop


def start(loop: task.LoopingCall, interval: float, what: str, now: bool = False) -> None:
    """Start ``loop``; if it ever ends with a failure, say so."""
    loop.start(interval, now=now).addErrback(
        lambda failure: log.failure("{what} stopped", failure, what=what)
    )


def every(interval: float, f: Callable[[], Any], clock: Any, what: str) -> TimerService:
    """A TimerService of ``guarded(f)`` on ``clock``: at start, then every ``interval``."""
    service = TimerService(interval, guarded(f, what))
    service.clock = clock
    return service


def paced_cooperator(clock: Any) -> task.Cooperator:
    """A process's one Cooperator: long walks (the live-session sweep after a CRL update,
    kept OCSP answers restored) run in slices, one per turn of ``clock``'s loop, so a large
    listener never stalls it. Not started: its service starts and stops it."""
    return task.Cooperator(scheduler=lambda work: clock.callLater(0, work), started=False)
