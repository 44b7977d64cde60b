"""Inbound PROXY protocol (``proxy_protocol = true``): a load balancer in front of the gateway
sends a v1 or v2 header before the TLS handshake; the connection is then admitted and served
as if it came from the device's own address (limits, logs, the session log, the PROXY header
to the broker).

The header must arrive within ``proxy_protocol_timeout`` and be valid, else the connection is
closed and refused (``bad_proxy_header``). Once it is read, the TLS protocol is built (and
admitted) on the device's address, and every later read is handed to it: one method call
per read on these listeners only.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import address, protocol
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from gateway.proxy.proxyproto import HeaderReader, ProxyHeaderError
from gateway.reasons import Reason


class ProxyFrontProtocol(protocol.Protocol):
    transport: Any
    reads_before_tls = True  # (a transport with TLS of its own hands it the raw bytes)

    def __init__(self, factory: ProxyFrontFactory, addr: Any) -> None:
        self.factory = factory
        self.addr = addr
        self.reader = HeaderReader()
        self.timer: Any = None
        self.inner: Any = None

    def connectionMade(self) -> None:
        self.timer = self.factory.reactor.callLater(self.factory.timeout, self._timed_out)

    def _timed_out(self) -> None:
        self.timer = None
        self._refuse(f"no PROXY header within {self.factory.timeout:g}s")

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        try:
            result = self.reader.feed(data)
        except ProxyHeaderError as e:
            self._refuse(e.detail)
            return
        if result is None:
            return
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        addr = self.addr
        if not result.local and result.source is not None:
            host, port = result.source
            kind = address.IPv6Address if ":" in host else address.IPv4Address
            addr = kind("TCP", host, port)
        inner = self.factory.wrapped.buildProtocol(addr)  # admission, on the real address
        if inner is None:
            self.transport.loseConnection()
            return
        start_tls = getattr(self.transport, "start_tls", None)
        if start_tls is not None:  # TLS in the transport itself: the client takes over
            start_tls(inner, self.reader.rest)
            return
        self.inner = inner
        inner.makeConnection(self.transport)
        if self.reader.rest:
            inner.dataReceived(self.reader.rest)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        if self.inner is not None:
            self.inner.connectionLost(reason)

    def _refuse(self, detail: str) -> None:
        peer = f"{getattr(self.addr, 'host', self.addr)}:{getattr(self.addr, 'port', '')}"
        self.factory.refuse(Reason.BAD_PROXY_HEADER, peer, detail)
        self.transport.abortConnection()


class ProxyFrontFactory(protocol.Factory):
    """Wraps the listener's TLS factory: reads the PROXY header first."""

    noisy = False

    def __init__(self, wrapped: Any, timeout: float, reactor: IReactorTime, refuse: Any) -> None:
        self.wrapped = wrapped
        self.timeout = timeout
        self.reactor = reactor
        self.refuse = refuse  # (reason, peer, detail): counts and logs (rate-limited log)

    def buildProtocol(self, addr: Any) -> ProxyFrontProtocol:
        return ProxyFrontProtocol(self, addr)

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()
