"""A drain: a listener's connections are closed over a time, then the rest (shutdown, or a
listener a reload removed).

A fleet closed all in one second reconnects all in one second (the reconnection storm that
takes the next gateway or broker down). So a drain closes its sessions at a pace, oldest
first (``drain_rate``: so many per second, or spread evenly over the drain), and only what
is left when the time is up is closed at once."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Mapping
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from gateway.config.model import GlobalSettings
from gateway.proxy.entry import Gate
from gateway.proxy.relay import ClientProtocol
from gateway.reasons import Reason
from gateway.status import GatewayStatus

ABORT_AFTER = 2.0  # after a stop: time for close_notify and the broker side to close
TICK = 0.05  # seconds between two batches of paced closes
SPREAD = 0.8  # drain_rate = auto: the paced closes end by this share of the drain


def pace(rate: float | None, sessions: int, seconds: float) -> float:
    """Closes per second: ``rate`` (None: auto, ``sessions`` spread over ``seconds``)."""
    if rate is not None:
        return rate
    return sessions / (seconds * SPREAD) if seconds > 0 else 0.0


def drain_shares(
    rate: float | None, listeners: Mapping[str, Any], workers: object | None
) -> dict[str, float | None]:
    """Each listener's ``drain_rate`` in this process: split by the sessions each holds
    (``listeners``: their services, with their gates), and among the workers when this is
    one of them (``MQTTGW_WORKERS``); None (auto) stays auto: each spreads its own."""
    if rate is None or workers is not None:  # (a master holds no session of its own)
        return {name: rate for name in listeners}
    rate /= max(1, int(os.environ.get("MQTTGW_WORKERS", "1") or 1))
    counts = {name: len(ls.gate.protocols) for name, ls in listeners.items()}
    total = sum(counts.values())
    return {name: rate * n / total if total else rate for name, n in counts.items()}


def drain_summary(g: GlobalSettings, status: GatewayStatus) -> dict[str, Any]:
    """What a drain asked for (POST /drain) will do, for the one who asked."""
    sessions = sum(ls.stats.active for ls in status.listeners)
    sessions += sum(w.active for w in status.workers)
    return {
        "ok": True,
        "sessions": sessions,
        "ready_delay_seconds": g.drain_ready_delay,
        "drain_seconds": g.shutdown_drain,
        "drain_rate": "auto" if g.drain_rate is None else g.drain_rate,
    }


def drain(
    gate: Gate,
    reactor: IReactorTime,
    seconds: float,
    by: Reason,
    why: str,
    rate: float | None = 0.0,
) -> defer.Deferred[int]:
    """Close the listener's connections at ``rate`` per second, oldest first (None: spread
    evenly over ``seconds``; 0: none early), and after ``seconds`` the rest
    (``ClientProtocol.stop``: each relayed session logged as closed by ``by``, MQTT 5
    devices told why); abort whatever has not closed ``ABORT_AFTER`` seconds later. Fires
    with the number the gateway ended, as soon as the last connection is gone."""
    ended = 0
    queue = deque(c for c in gate.clients() if isinstance(c, ClientProtocol))  # oldest first
    per_second = pace(rate, len(queue), seconds)

    def stop(client: ClientProtocol) -> None:
        nonlocal ended
        if client in gate.protocols or client.transport in gate.protocols:  # still open
            ended += 1
            client.stop(by, why)

    budget = 0.0

    def tick() -> None:
        nonlocal budget
        budget += per_second * TICK
        while budget >= 1 and queue:
            budget -= 1
            stop(queue.popleft())

    def stop_the_rest() -> None:
        if paced.running:
            paced.stop()
        while queue:
            stop(queue.popleft())

    def abort_the_rest() -> None:
        for connection in list(gate.protocols):
            connection.transport.abortConnection()

    paced = task.LoopingCall(tick)
    paced.clock = reactor
    if per_second > 0 and seconds > 0 and queue:
        paced.start(TICK, now=False)
    timers = [
        reactor.callLater(seconds, stop_the_rest),
        reactor.callLater(seconds + ABORT_AFTER, abort_the_rest),
    ]

    def done(_: object) -> int:
        if paced.running:
            paced.stop()
        for timer in timers:
            if timer.active():
                timer.cancel()
        return ended

    return gate.when_empty().addCallback(done)
