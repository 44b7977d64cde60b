"""The broker side of one relayed client: the connection's factory (which a broker pool
hooks into for failover and counts) and its protocol, which writes the broker's bytes
straight to the client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import error, protocol
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.failures import plain_reason
from gateway.proxy.contracts import Downstream
from gateway.tls.native import session_reused


class UpstreamFactory(protocol.ClientFactory):
    """One per attempt to reach a broker, carrying the client it serves and what its
    connector (a broker pool) is told: ``on_failed`` (this broker could not be reached: try
    the next one, or tell the client), ``on_connected`` / ``on_closed`` for its counts;
    ``tls`` when the connection is wrapped in TLS (then it is up only once the handshake is
    done), ``tls_done`` to keep the TLS session for resumption."""

    noisy = False

    def __init__(
        self,
        client: Downstream,
        on_failed: Callable[[Failure], None],
        on_connected: Callable[[], None] = lambda: None,
        on_closed: Callable[[], None] = lambda: None,
        tls: bool = False,
        tls_done: Callable[[Any], None] | None = None,
    ) -> None:
        self.client = client
        self.on_failed = on_failed
        self.on_connected = on_connected
        self.on_closed = on_closed
        self.tls = tls
        self.tls_done = tls_done

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        upstream = UpstreamProtocol()
        upstream.factory = self
        return upstream

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.on_failed(reason)


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class UpstreamProtocol(protocol.Protocol):
    """The broker side, bytes straight to the client: over plain TCP it is up when the
    TCP connection is; over TLS when the handshake (the broker's certificate verified) is
    done, and a connection lost before that is a failed connect."""

    factory: UpstreamFactory
    transport: Any  # the TCP connection to the broker, or the TLS layer over it
    up = False
    _session_kept = False

    def connectionMade(self) -> None:
        if not self.factory.tls:
            self._up()

    def handshakeCompleted(self) -> None:
        self.factory.client.upstream_tls(session_reused(self.transport.getHandle()))
        self._keep_session()
        self._up()

    def _up(self) -> None:
        self.up = True
        self.factory.on_connected()
        self.factory.client.upstream_connected(self)

    def _keep_session(self) -> None:
        if self.factory.tls_done is not None:
            self.factory.tls_done(self.transport.getHandle())

    def dataReceived(self, data: bytes) -> None:
        if self.factory.tls and not self._session_kept:
            self._session_kept = True  # a TLS 1.3 ticket arrives after the handshake
            self._keep_session()
        self.factory.client.from_broker(data)

    def readConnectionLost(self) -> None:
        # The broker half-closed: everything it sent is queued for the client; close after it.
        self.factory.client.upstream_lost(half=True, why="it closed its sending side")

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if not self.up:  # a TLS handshake that failed (the broker's certificate, ...)
            self.factory.clientConnectionFailed(None, reason)
            return
        self.factory.on_closed()
        self.factory.client.upstream_lost(why=lost_text(reason))


def lost_text(reason: Failure) -> str:
    """How a TCP connection ended, in plain words (never a repr)."""
    if reason.check(error.ConnectionDone):
        return "connection closed cleanly"
    if reason.check(error.ConnectionLost):
        return "connection lost (reset, or the network cut)"
    return plain_reason(reason)  # a TLS error in OpenSSL's words, never a repr
