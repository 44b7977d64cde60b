"""A drain: a listener's connections get time to end by themselves, then the gateway ends
the rest (shutdown, or a listener a reload removed)."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from gateway.proxy.entry import Gate
from gateway.proxy.relay import ClientProtocol
from gateway.reasons import Reason

ABORT_AFTER = 2.0  # after a stop: time for close_notify and the broker side to close


def drain(
    gate: Gate, reactor: IReactorTime, seconds: float, by: Reason, why: str
) -> defer.Deferred[int]:
    """Let the listener's connections end by themselves for ``seconds``, then end the rest
    (``ClientProtocol.stop``: each relayed session logged as closed by ``by``), and abort
    whatever has not closed ``ABORT_AFTER`` seconds later. Fires with the number the
    gateway ended, as soon as the last connection is gone."""
    ended = 0

    def stop_the_rest() -> None:
        nonlocal ended
        for client in gate.clients():
            if isinstance(client, ClientProtocol):
                ended += 1
                client.stop(by, why)

    def abort_the_rest() -> None:
        for connection in list(gate.protocols):
            connection.transport.abortConnection()

    timers = [
        reactor.callLater(seconds, stop_the_rest),
        reactor.callLater(seconds + ABORT_AFTER, abort_the_rest),
    ]

    def done(_: object) -> int:
        for timer in timers:
            if timer.active():
                timer.cancel()
        return ended

    return gate.when_empty().addCallback(done)
