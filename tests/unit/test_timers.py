"""Periodic work never dies: a call that raises, or whose Deferred fails, is logged and the
timer keeps going (Twisted's LoopingCall and TimerService stop for good otherwise)."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from gateway import timers


def test_a_raising_call_is_logged_and_the_loop_goes_on() -> None:
    """Every other call raises or fails its Deferred: each failure is one log line naming
    what failed, and every turn still runs."""
    clock = Clock()
    calls: list[float] = []

    def work() -> object:
        calls.append(clock.seconds())
        if len(calls) % 3 == 1:
            raise ValueError("boom")
        if len(calls) % 3 == 2:
            return defer.fail(RuntimeError("late boom"))
        return None

    loop = timers.looping(work, clock, "the test job")
    with capturedLogs() as events:
        timers.start(loop, 1.0, "the test job")
        clock.pump([1.0] * 6)
    assert calls == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] and loop.running
    failures = [e for e in events if e.get("log_failure") is not None]
    assert len(failures) == 4 and all(e["what"] == "the test job" for e in failures)


def test_a_timer_service_survives_its_call() -> None:
    """``every``: a TimerService whose call raises keeps running."""
    clock = Clock()
    calls = []

    def work() -> None:
        calls.append(1)
        raise ValueError("boom")

    service = timers.every(1.0, work, clock, "the test service")
    with capturedLogs():
        service.startService()
        clock.pump([1.0] * 3)
    assert len(calls) == 4 and service.running
