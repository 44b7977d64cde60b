"""Opening the broker connection of one client: a pool of brokers, plain TCP or TLS, with
failover within one connect budget, and the pool's active health checks.

IP literals go straight to ``connectTCP`` (no resolver round trip, no endpoint wrapper in
the relay's data path); host names go through HostnameEndpoint, which resolves them without
blocking the reactor. With ``upstream_tls`` the connection is wrapped in TLS: the broker's
certificate is verified (chain to ``upstream_cacertfile``, name or IP address with
service_identity, through Twisted's ``optionsForClientTLS``), and each broker's last TLS
session is offered again, so that a reconnect storm resumes rather than doing full
handshakes to the broker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from twisted.application.internet import TimerService
from twisted.internet import defer, endpoints, protocol, ssl
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway import mqtt, timers
from gateway.choices import HealthCheck
from gateway.config.model import UpstreamSettings
from gateway.failures import plain_reason
from gateway.mqtt.packets import DISCONNECT
from gateway.proxy.broker_link import UpstreamFactory
from gateway.proxy.contracts import Downstream
from gateway.proxy.pool import Broker, BrokerPool

log = Logger()

# An endpoint's failure has no IConnector to hand to clientConnectionFailed.
_NO_CONNECTOR: Any = None


# -- TLS to the broker -------------------------------------------------------------------


@implementer(IOpenSSLClientConnectionCreator)
class ResumingClientCreator:
    """Twisted's verifying client TLS options for one broker, offering the broker's last
    session again (OpenSSL clients resume only a session they are given)."""

    def __init__(self, server_name: str, trust: Any, client: Any, reuse: bool = True) -> None:
        self.reuse = reuse
        kwargs: dict[str, Any] = {"trustRoot": trust}
        if client is not None:
            kwargs["clientCertificate"] = client
        self.options = ssl.optionsForClientTLS(server_name, **kwargs)
        self.session: SSL.Session | None = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection: SSL.Connection = self.options.clientConnectionForTLS(tlsProtocol)
        if self.session is not None:
            connection.set_session(self.session)
        return connection

    def keep(self, connection: Any) -> None:
        if not self.reuse:
            return
        try:
            session = connection.get_session()
        except Exception:
            return
        if session is not None:
            self.session = session


# -- the connector -------------------------------------------------------------------------


class PoolConnector:
    """``connect(factory)`` for the relay: tries the pool's candidates for the client, in
    balancing order, within one ``upstream_connect_timeout``; a failed broker is marked down
    and the next one tried; returns the cancel function of the attempt in progress."""

    def __init__(
        self,
        reactor: Any,
        settings: UpstreamSettings,
        pool: BrokerPool,
        tls: Any = None,  # UpstreamTrust (tls.material): the broker's CAs, our certificate
    ) -> None:
        self.reactor = reactor
        self.settings = settings
        self.pool = pool
        self.creators: dict[int, ResumingClientCreator] = {}
        if settings.tls is not None:
            trust, client = tls.trust, tls.client
            for broker in pool.brokers:
                name = settings.tls.server_name or broker.host
                self.creators[broker.index] = ResumingClientCreator(
                    name, trust, client, settings.tls.session_reuse
                )

    def __call__(self, client: Downstream, client_id: str) -> Callable[[], None]:
        now = self.reactor.seconds()
        attempt = _Attempt(
            self, client, self.pool.candidates(client_id, now), now + self.settings.connect_timeout
        )
        attempt.next()
        return attempt.cancel

    def open(
        self, broker: Broker, wrapped: protocol.ClientFactory, timeout: float
    ) -> Callable[[], None]:
        """Connect ``wrapped`` to ``broker`` (TLS-wrapped if configured); the cancel."""
        factory: Any = wrapped
        creator = self.creators.get(broker.index)
        if creator is not None:
            factory = TLSMemoryBIOFactory(creator, True, wrapped, clock=self.reactor)
        host, port = broker.host, broker.port
        if isIPAddress(host) or isIPv6Address(host):
            connector: Any = self.reactor.connectTCP(host, port, factory, timeout=timeout)
            return connector.stopConnecting
        endpoint = endpoints.HostnameEndpoint(self.reactor, host, port, timeout=timeout)
        d = endpoint.connect(factory)

        def failed(reason: Failure) -> None:
            wrapped.clientConnectionFailed(_NO_CONNECTOR, reason)

        d.addErrback(failed)
        return d.cancel


class _Attempt:
    """One client's way through the pool: each broker in turn (a connection factory each)
    until one answers, within one deadline."""

    def __init__(
        self,
        connector: PoolConnector,
        client: Downstream,
        candidates: list[Broker],
        deadline: float,
    ) -> None:
        self.connector = connector
        self.client = client
        self.candidates = candidates
        self.deadline = deadline
        self.broker: Broker | None = None
        self._cancel: Callable[[], None] | None = None
        self.errors: list[str] = []
        self.over = False  # cancelled, or the client was told it failed

    def next(self) -> None:
        remaining = self.deadline - self.connector.reactor.seconds()
        if not self.candidates or remaining <= 0:
            reason = Failure(ConnectionError("; ".join(self.errors) or "no broker to try"))
            where = "every broker of the pool"
            if len(self.errors) == 1:
                reason, where = self._last
            self.over = True
            self.client.upstream_failed(reason, where)
            return
        self.broker = self.candidates.pop(0)
        creator = self.connector.creators.get(self.broker.index)
        factory = UpstreamFactory(
            self.client,
            self.failed,
            self.connected,
            self.closed,
            tls=self.connector.settings.tls is not None,
            tls_done=creator.keep if creator is not None else None,
        )
        self._cancel = self.connector.open(self.broker, factory, remaining)

    def failed(self, reason: Failure) -> None:
        if self.over:
            return  # cancelled: nobody to tell
        broker = self.broker
        assert broker is not None
        text = plain_reason(reason)
        self.errors.append(f"{broker.name}: {text}")
        self.connector.pool.failed(broker, self.connector.reactor.seconds(), text)
        self._last = (reason, broker.name)
        self.next()

    def connected(self) -> None:
        assert self.broker is not None
        self.connector.pool.connected(self.broker)

    def closed(self) -> None:
        if self.broker is not None:
            self.connector.pool.released(self.broker)

    def cancel(self) -> None:
        self.candidates = []
        self.over = True
        if self._cancel is not None:
            self._cancel()


# -- active health checks ------------------------------------------------------------------


@implementer(IHandshakeListener)
class _Check(protocol.Protocol):
    """TCP/TLS: up once connected (after the handshake with TLS). MQTT: up once a CONNACK
    accepting a clean CONNECT arrives."""

    transport: Any

    def __init__(self, done: defer.Deferred[None], mqtt_connect: bytes | None, tls: bool) -> None:
        self.done = done
        self.mqtt_connect = mqtt_connect
        self.tls = tls
        self.buffer = b""

    def connectionMade(self) -> None:
        if self.mqtt_connect is not None:
            self.transport.write(self.mqtt_connect)
        elif not self.tls:
            self._finish(None)
        # with TLS, handshakeCompleted says it is done

    def handshakeCompleted(self) -> None:
        if self.mqtt_connect is None:
            self._finish(None)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        try:
            answer = mqtt.read_connack(self.buffer)
        except mqtt.ProtocolError as e:
            self._finish(ConnectionError(f"not an MQTT broker: {e.detail}"))
            return
        if answer is None:
            return
        if answer.accepted:
            self.transport.write(DISCONNECT)
            self._finish(None)
        else:
            self._finish(ConnectionError(f"CONNACK refused (code {answer.code})"))

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._finish(ConnectionError(plain_reason(reason)))

    def _finish(self, error: Exception | None) -> None:
        if self.done.called:
            return
        if error is None:
            self.done.callback(None)
        else:
            self.done.errback(error)
        self.transport.loseConnection()


class HealthChecker(TimerService):
    """Checks every broker of a pool every ``check_interval`` (Twisted's TimerService: at
    start, then each interval): a TCP (or TLS) connect, or a real MQTT CONNECT/CONNACK;
    pool.check_ok or pool.failed with the reason. A check never fails (DeferredList)."""

    def __init__(self, connector: PoolConnector, listener: str) -> None:
        super().__init__(
            connector.settings.check_interval, timers.guarded(self.check_all, "a health check")
        )
        self.clock = connector.reactor
        self.connector = connector
        self.name = f"upstream-check:{listener}"
        settings = connector.settings
        self.mqtt_connect = (
            mqtt.connect_packet(settings.check_client_id, keep_alive=30)
            if settings.check == HealthCheck.MQTT
            else None
        )

    def check_all(self) -> defer.Deferred[Any]:
        return defer.DeferredList([self.check(b) for b in self.connector.pool.brokers])

    def check(self, broker: Broker) -> defer.Deferred[None]:
        connector = self.connector
        done: defer.Deferred[None] = defer.Deferred()
        tls = connector.settings.tls is not None
        factory = _CheckFactory(done, self.mqtt_connect, tls)
        timeout = connector.settings.connect_timeout
        cancel = connector.open(broker, factory, timeout)
        done.addTimeout(timeout + 1, connector.reactor, onTimeoutCancel=lambda *_: cancel())

        def ok(_: object) -> None:
            connector.pool.check_ok(broker)

        def bad(reason: Failure) -> None:
            text = plain_reason(reason) if not reason.check(defer.TimeoutError) else "timeout"
            connector.pool.failed(broker, connector.reactor.seconds(), f"health check: {text}")

        return done.addCallbacks(ok, bad)


class _CheckFactory(protocol.ClientFactory):
    noisy = False

    def __init__(self, done: defer.Deferred[None], mqtt_connect: bytes | None, tls: bool) -> None:
        self.done, self.mqtt_connect, self.tls = done, mqtt_connect, tls

    def buildProtocol(self, addr: Any) -> _Check:
        return _Check(self.done, self.mqtt_connect, self.tls)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self.done.called:
            self.done.errback(ConnectionError(plain_reason(reason)))
