"""Where a listener's connections come in: admission before any TLS work, then TLS (with
the PROXY header of a load balancer first, where the listener expects one).

``EntryFactory`` is what the listening port holds for the listener's whole life; it hands
each connection to the entry the listener's current settings ask for (a reload that turns
``proxy_protocol`` on or off changes the next connection's, not the port's factory).
``DirectFactory`` admits or refuses each connection (``proxy.admission``) through the
listener's ``Gate``, which keeps count of the connections it serves, so a drain learns when
the last one ended.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gateway.config.model import ConnectionLimits, FrontSettings
from gateway.proxy.admission import Admission, RefusalLog, address_key
from gateway.proxy.front import ProxyFrontFactory
from gateway.reasons import Reason
from gateway.status import ListenerStats

log = Logger()

# Refusals before TLS: this many per interval are logged one by one, the rest summarised.
REFUSALS_LOGGED_PER_INTERVAL = 10
REFUSAL_SUMMARY_INTERVAL = 10.0


class Gate:
    """Admission before any TLS work, for either entry: connection caps and rates
    (``gateway.proxy.admission``); a refused connection is closed at once and counted,
    logged one by one up to a threshold per interval, then summarised. Keeps the open
    connections (``protocols``), so that a drain learns when the last one ended."""

    def __init__(
        self, name: str, stats: ListenerStats, limits: ConnectionLimits, reactor: IReactorTime
    ) -> None:
        self.name = name
        self.stats = stats
        self.reactor = reactor
        self.admission = Admission(
            limits.max_connections,
            limits.max_connections_per_ip,
            limits.max_conn_rate,
            limits.max_conn_rate_per_ip,
            reactor.seconds(),
        )
        self.refusals = RefusalLog(REFUSALS_LOGGED_PER_INTERVAL)
        self.protocols: dict[Any, str] = {}  # open connection -> its address key
        self._summary: Any = None  # the pending summary call, while refusals are suppressed
        self._empty: list[defer.Deferred[None]] = []

    def reconfigure(self, limits: ConnectionLimits) -> None:
        """A reload's limits, from the next connection on (counts are kept)."""
        self.admission.reconfigure(limits)

    def admit(self, addr: Any) -> str | None:
        """The connection's address key if admitted; None (counted, logged) if refused."""
        host = getattr(addr, "host", str(addr))
        key = address_key(host) if self.admission.per_address else ""
        refused = self.admission.admit(key, self.reactor.seconds())
        if refused is not None:
            self.refuse(refused, key or host, f"{host}:{getattr(addr, 'port', '')}")
            return None
        return key

    def opened(self, connection: Any, key: str) -> None:
        self.protocols[connection] = key

    def closed(self, connection: Any) -> None:
        key = self.protocols.pop(connection, None)
        if key is not None:
            self.admission.release(key)
        if not self.protocols and self._empty:
            waiters, self._empty = self._empty, []
            for waiter in waiters:
                waiter.callback(None)

    def clients(self) -> list[Any]:
        """The open connections' client protocols (``ClientProtocol``)."""
        return [getattr(p, "wrappedProtocol", p) for p in list(self.protocols)]

    def when_empty(self) -> defer.Deferred[None]:
        """Fires once no connection of this listener is open (at once if none is)."""
        if not self.protocols:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._empty.append(d)
        return d

    def refuse(self, reason: Reason, key: str, peer: str, detail: str | None = None) -> None:
        """Count a connection refused before TLS; log it, or summarise a flood."""
        self.stats.refuse(reason)
        if self.refusals.note(reason, key):
            log.warn(
                "refused {listener} peer={peer} reason={reason}: {why}",
                listener=self.name,
                peer=peer,
                reason=reason.value,
                why=detail or reason.text,
            )
        elif self._summary is None:
            self._summary = self.reactor.callLater(REFUSAL_SUMMARY_INTERVAL, self._summarise)

    def _summarise(self) -> None:
        self._summary = None
        self.admission.prune(self.reactor.seconds())
        text = self.refusals.summary()
        if text is not None:
            log.warn(
                "refused {listener}: {summary} in the last {interval:.0f}s",
                listener=self.name,
                summary=text,
                interval=REFUSAL_SUMMARY_INTERVAL,
            )

    def stop(self) -> None:
        """Log what is still suppressed (at shutdown)."""
        if self._summary is not None and self._summary.active():
            self._summary.cancel()
            self._summarise()


class DirectFactory(protocol.Factory):
    """The client protocol itself on the port's transport, each connection admitted by the
    gate first: TLS in the port's transports (``tls.bio_transport.BioTLSPort``'s do it),
    or no TLS at all (a ws listener: a load balancer in front ended it)."""

    noisy = False

    def __init__(self, gate: Gate, clients: protocol.Factory) -> None:
        """``clients`` tells ``gate.closed`` when a connection is gone (no wrapping
        factory hears it here)."""
        self.gate = gate
        self.clients = clients

    def buildProtocol(self, addr: Any) -> Any:
        key = self.gate.admit(addr)
        if key is None:
            return None
        client = self.clients.buildProtocol(addr)
        self.gate.opened(client, key)
        return client

    def doStart(self) -> None:
        self.clients.doStart()

    def doStop(self) -> None:
        self.clients.doStop()


class EntryFactory(protocol.Factory):
    """The factory a listener's port holds: each connection goes to the PROXY header reader
    or straight to TLS, as ``front()`` (the listener's current settings) says."""

    noisy = False

    def __init__(
        self,
        tls: Any,
        front: Callable[[], FrontSettings],
        reactor: IReactorTime,
    ) -> None:
        self.tls = tls  # the DirectFactory
        self._front = front
        self._reactor = reactor
        self._proxied: tuple[float, ProxyFrontFactory] | None = None

    def buildProtocol(self, addr: Any) -> Any:
        front = self._front()
        if not front.proxy_protocol:
            return self.tls.buildProtocol(addr)
        if self._proxied is None or self._proxied[0] != front.proxy_protocol_timeout:
            timeout = front.proxy_protocol_timeout
            self._proxied = (
                timeout,
                ProxyFrontFactory(self.tls, timeout, self._reactor, self._refuse_front),
            )
        return self._proxied[1].buildProtocol(addr)

    def _refuse_front(self, reason: Reason, peer: str, detail: str) -> None:
        """A connection refused before TLS by the PROXY header reader."""
        self.tls.gate.refuse(reason, peer.rpartition(":")[0], peer, detail)

    def doStart(self) -> None:
        self.tls.doStart()

    def doStop(self) -> None:
        self.tls.doStop()
