"""The master's end of one worker's channel (AMP over a socket pair)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer, protocol
from twisted.protocols import amp
from twisted.python.failure import Failure

from gateway.workers import commands as c

if TYPE_CHECKING:
    from gateway.workers.pool import WorkerPool, WorkerSlot


class OneProtocol(protocol.Factory):
    def __init__(self, proto: protocol.Protocol) -> None:
        self.proto = proto

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        return self.proto


class MasterChannel(amp.AMP):
    """The master's end of one worker's channel."""

    def __init__(self, pool: WorkerPool, slot: WorkerSlot) -> None:
        super().__init__()
        self.pool = pool
        self.slot = slot

    def connectionMade(self) -> None:
        super().connectionMade()
        self.slot.channel = self
        self.pool.started(self.slot)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        super().connectionLost(reason)
        if self.slot.channel is self:
            self.slot.channel = None

    @c.Discover.responder
    def discover(self, listener: str, url: str) -> dict[str, Any]:
        self.pool.discover(listener, url)
        return {}

    @c.OcspQuery.responder
    def ocsp_query(
        self,
        listener: str,
        key_hash: bytes,
        issuer: bytes,
        serial: str,
        responder: str,
        subject: str,
        fresher_than: float,
    ) -> defer.Deferred[dict[str, Any]]:
        return self.pool.ocsp_query(
            listener, key_hash, issuer, int(serial), responder or None, subject, fresher_than
        )

    @c.WhenAttempted.responder
    def when_attempted(self, listener: str, url: str) -> defer.Deferred[dict[str, Any]]:
        return self.pool.when_attempted(listener, url).addCallback(lambda _: {})
