"""Client and upstream protocols of the relay.

A connection goes through four states:

1. ``handshake``: TLS in progress, bounded by ``handshake_timeout``.
2. ``connect``: handshake done, reading the client's CONNECT (sans-IO ``ConnectReader``),
   bounded by ``connect_timeout`` and ``max_packet_size``.
3. ``upstream``: CONNECT valid; the client transport is paused while the broker connection
   opens. Nothing reaches the broker before the client certificate has been verified.
4. ``relay``: bytes flow untouched in both directions, with producers registered both ways
   (as in twisted.protocols.portforward) so neither side buffers without bound.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer, error, protocol, task
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IHandshakeListener
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway import mqtt
from gateway.config import ListenerConfig
from gateway.metrics import ListenerStats
from gateway.tls.context import verify_error_text

log = Logger()

# Opens the broker connection for one client. The factory is told the outcome: its protocol's
# connectionMade on success, its clientConnectionFailed on failure. Returns a cancel function.
ConnectUpstream = Callable[["UpstreamFactory"], Callable[[], None]]


def ssl_error_text(exc: BaseException | None) -> str:
    """OpenSSL's reason strings from an SSL.Error, else the exception's text."""
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list):
        reasons = [str(item[-1]) for item in exc.args[0] if isinstance(item, tuple)]
        if reasons:
            return "; ".join(reasons)
    if exc is None:
        return "unknown"
    return str(exc) or exc.__class__.__name__


def classify_handshake_failure(reason: Failure) -> str:
    text = ssl_error_text(reason.value)
    if "peer did not return a certificate" in text:
        return "no_certificate"
    if reason.check(SSL.Error):
        return "tls_error"
    return "closed_in_handshake"


def describe_peer_certificate(connection: SSL.Connection) -> tuple[str, str]:
    cert = connection.get_peer_certificate(as_cryptography=True)
    if cert is None:
        return "-", "-"
    return cert.subject.rfc4514_string(), format(cert.serial_number, "X")


class GatewayFactory(protocol.Factory):
    """Builds ``ClientProtocol`` for one listener (wrapped by the TLS factory)."""

    noisy = False

    def __init__(
        self,
        listener: ListenerConfig,
        reactor: Any,
        connect_upstream: ConnectUpstream,
        stats: ListenerStats,
        revocation: Any = None,
    ) -> None:
        self.listener = listener
        self.reactor = reactor
        self.connect_upstream = connect_upstream
        self.stats = stats
        self.revocation = revocation  # RevocationChecker, when CRL checking is on
        self.live: set[ClientProtocol] = set()  # connections in the relay state

    def buildProtocol(self, addr: Any) -> ClientProtocol:
        return ClientProtocol(self, addr)

    def sweep_revoked(self, _crls: object = None) -> defer.Deferred[None]:
        """After a CRL update: close live sessions whose certificate is now revoked.

        Works through the connections cooperatively, so that a large listener does not
        stall the reactor.
        """
        checker = self.revocation
        if checker is None:
            return defer.succeed(None)

        def sweep() -> Iterator[None]:
            for client in list(self.live):
                if client.state == "relay" and checker.chain_revoked(client.chain):
                    client.revoke_session()
                yield None

        return task.cooperate(sweep()).whenDone().addCallback(lambda _: None)


@implementer(IHandshakeListener)
class ClientProtocol(protocol.Protocol):
    """The device side, running inside TLSMemoryBIOProtocol."""

    # The TLS protocol (TLSMemoryBIOProtocol): a transport, a producer and a consumer.
    transport: Any

    def __init__(self, factory: GatewayFactory, addr: Any) -> None:
        self.factory = factory
        self.peer = f"{getattr(addr, 'host', addr)}:{getattr(addr, 'port', '')}"
        self.state = "handshake"
        self.subject = "-"
        self.serial = "-"
        self.connect: mqtt.Connect | None = None
        self.upstream: UpstreamProtocol | None = None
        self._reader: mqtt.ConnectReader | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._timer: IDelayedCall | None = None
        self._verify_failure: tuple[str, int, int] | None = None
        self._refusal: str | None = None
        self._cancel_upstream: Callable[[], None] | None = None
        # Filled by the verify callback: (issuer DER, serial) of each certificate in the
        # verified chain, and a distribution point still to fetch for the leaf.
        self.chain: list[tuple[bytes, int]] = []
        self.crl_pending: tuple[str, bytes, int] | None = None

    # -- helpers ------------------------------------------------------------------------

    @property
    def listener(self) -> ListenerConfig:
        return self.factory.listener

    def _start_timer(self, seconds: float, what: str) -> None:
        self._cancel_timer()
        self._timer = self.factory.reactor.callLater(seconds, self._timed_out, what)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self, what: str) -> None:
        self._timer = None
        self.refuse(f"{what}_timeout", f"no {what} within the time allowed")
        self.transport.abortConnection()

    def refuse(self, reason: str, detail: str) -> None:
        """Record and log why this connection is being turned away (once)."""
        if self._refusal is not None:
            return
        self._refusal = reason
        self.factory.stats.refuse(reason)
        log.warn(
            "refused {listener} peer={peer} reason={reason} subject={subject}: {detail}",
            listener=self.listener.name,
            peer=self.peer,
            reason=reason,
            subject=self.subject,
            detail=detail,
        )

    def note_verify_failure(
        self, reason: str, errno: int, depth: int, subject: str, serial: str
    ) -> None:
        """Called from the verify callback: remember the first failure for the log."""
        if self._verify_failure is None:
            self._verify_failure = (reason, errno, depth)
            self.subject, self.serial = subject, serial

    # -- Twisted callbacks --------------------------------------------------------------

    def connectionMade(self) -> None:
        self.factory.stats.active += 1
        self._start_timer(self.listener.handshake_timeout, "handshake")

    def handshakeCompleted(self) -> None:
        self.state = "connect"
        tls = self.transport._tlsConnection
        self.subject, self.serial = describe_peer_certificate(tls)
        self._reader = mqtt.ConnectReader(self.listener.max_packet_size)
        self._start_timer(self.listener.connect_timeout, "connect")

    def dataReceived(self, data: bytes) -> None:
        if self.state == "relay":
            self.factory.stats.bytes_in += len(data)
            self.upstream.transport.write(data)  # type: ignore[union-attr]
        elif self.state == "connect":
            self._read_connect(data)
        elif self.state == "upstream":
            # The TLS layer may deliver records decrypted from the same read after a pause.
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size > self.listener.max_packet_size:
                self.refuse("bad_connect", "too much data before the broker connection opened")
                self.transport.loseConnection()

    def _read_connect(self, data: bytes) -> None:
        assert self._reader is not None
        try:
            self._reader.receive_data(data)
            event = self._reader.next_event()
        except mqtt.RemoteProtocolError as e:
            self.state = "closing"
            self._cancel_timer()
            self.refuse("bad_connect", f"{e.kind}: {e.detail}")
            self.transport.loseConnection()
            return
        if event is mqtt.NEED_DATA:
            return
        assert isinstance(event, mqtt.Connect)
        self._cancel_timer()
        self.connect = event
        self._pending = [event.packet]
        trailing = self._reader.trailing_data
        if trailing:
            self._pending.append(trailing)
        self._pending_size = len(trailing)
        self._reader = None
        self.state = "upstream"
        self.transport.pauseProducing()
        if self.crl_pending is not None and self.factory.revocation is not None:
            self._hold_for_crl()
        else:
            self._open_upstream()

    def _hold_for_crl(self) -> None:
        """The leaf's CRL is being fetched from its distribution point: decide when it is in."""
        assert self.crl_pending is not None
        url, issuer, serial = self.crl_pending
        checker = self.factory.revocation
        log.info(
            "holding {listener} peer={peer} subject={subject} until the CRL at {url} is fetched",
            listener=self.listener.name,
            peer=self.peer,
            subject=self.subject,
            url=url,
        )
        wait = checker.crl_service.when_attempted(url)
        wait.addTimeout(self.listener.crl_cache_http_timeout + 5, self.factory.reactor)

        def decide(_: object) -> None:
            if self.state != "upstream":
                return
            refusal = checker.decide_held(issuer, serial)
            if refusal is None:
                self._open_upstream()
                return
            self.refuse(refusal, f"after fetching {url}")
            self._close_with_connack(mqtt.NOT_AUTHORIZED)

        wait.addBoth(decide)
        wait.addErrback(lambda f: log.failure("CRL hold failed", f))

    def _open_upstream(self) -> None:
        self._cancel_upstream = self.factory.connect_upstream(UpstreamFactory(self))

    def upstream_connected(self, upstream: UpstreamProtocol) -> None:
        self._cancel_upstream = None
        if self.state != "upstream":  # the client went away meanwhile
            upstream.transport.loseConnection()
            return
        self.state = "relay"
        self.upstream = upstream
        upstream.transport.write(b"".join(self._pending))
        self._pending = []
        self._pending_size = 0
        # Flow control both ways: a full write buffer on one side pauses reading on the other.
        upstream.transport.registerProducer(self.transport, True)
        self.transport.registerProducer(upstream.transport, True)
        self.transport.resumeProducing()
        self.factory.live.add(self)
        stats = self.factory.stats
        stats.accepted += 1
        assert self.connect is not None
        log.info(
            "accepted {listener} peer={peer} subject={subject} serial={serial} "
            "client_id={client_id!r} mqtt={mqtt_level}",
            listener=self.listener.name,
            peer=self.peer,
            subject=self.subject,
            serial=self.serial,
            client_id=self.connect.client_id,
            mqtt_level=self.connect.protocol_level,
        )

    def upstream_failed(self, reason: Failure) -> None:
        self._cancel_upstream = None
        if self.state != "upstream":
            return
        host, port = self.listener.upstream
        self.refuse("upstream_unavailable", f"{host}:{port}: {reason.getErrorMessage()}")
        self._close_with_connack(mqtt.SERVER_UNAVAILABLE)

    def _close_with_connack(self, code: tuple[int, int]) -> None:
        """Answer the held CONNECT with a refusing CONNACK in its dialect, then close."""
        self.state = "closing"
        assert self.connect is not None
        self.transport.write(mqtt.connack(self.connect.protocol_level, code))
        self.transport.loseConnection()

    def revoke_session(self) -> None:
        """This live session's certificate was revoked by a CRL update: close it.

        The gateway does not parse the relayed stream, so it cannot place an MQTT 5
        DISCONNECT at a packet boundary; the session ends with a TLS close_notify.
        """
        self.factory.stats.refuse("revoked_live")
        log.warn(
            "closing {listener} peer={peer} subject={subject} serial={serial}: certificate "
            "revoked by a CRL update",
            listener=self.listener.name,
            peer=self.peer,
            subject=self.subject,
            serial=self.serial,
        )
        self.state = "closing"
        if self.upstream is not None:
            self.upstream.transport.unregisterProducer()
            self.upstream.transport.loseConnection()
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def upstream_lost(self, reason: Failure) -> None:
        """The broker closed (or half-closed): flush what we have to the device and close."""
        if self.state == "relay":
            self.state = "closing"
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._cancel_timer()
        self.factory.live.discard(self)
        self.factory.stats.active -= 1
        state, self.state = self.state, "closed"
        if state == "handshake":
            if self._verify_failure is not None:
                why, errno, depth = self._verify_failure
                detail = f"certificate verification failed at depth {depth}: " + verify_error_text(
                    errno
                )
                self.refuse(why, detail)
            else:
                self.refuse(classify_handshake_failure(reason), ssl_error_text(reason.value))
        elif state == "connect" and self._refusal is None:
            self.refuse("bad_connect", "closed before a complete CONNECT")
        elif state == "upstream" and self._cancel_upstream is not None:
            cancel, self._cancel_upstream = self._cancel_upstream, None
            cancel()
        elif state in ("relay", "closing") and self.upstream is not None:
            upstream, self.upstream = self.upstream, None
            upstream.transport.unregisterProducer()
            upstream.transport.loseConnection()
            if state == "relay":
                log.info(
                    "closed {listener} peer={peer} subject={subject}: {why}",
                    listener=self.listener.name,
                    peer=self.peer,
                    subject=self.subject,
                    why=reason.getErrorMessage(),
                )


class UpstreamFactory(protocol.ClientFactory):
    """One per upstream connection, carrying the client it serves."""

    noisy = False

    def __init__(self, client: ClientProtocol) -> None:
        self.client = client

    def buildProtocol(self, addr: Any) -> UpstreamProtocol:  # type: ignore[override]
        upstream = UpstreamProtocol()
        upstream.factory = self
        return upstream

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.client.upstream_failed(reason)


@implementer(IHalfCloseableProtocol)
class UpstreamProtocol(protocol.Protocol):
    """The broker side: plain TCP, bytes straight to the client."""

    factory: UpstreamFactory
    transport: Any  # the TCP connection to the broker

    def connectionMade(self) -> None:
        self.factory.client.upstream_connected(self)

    def dataReceived(self, data: bytes) -> None:
        client: ClientProtocol = self.factory.client
        if client.state in ("relay", "closing"):
            client.factory.stats.bytes_out += len(data)
            client.transport.write(data)

    def readConnectionLost(self) -> None:
        # The broker half-closed: everything it sent is queued for the client; close after it.
        self.factory.client.upstream_lost(Failure(error.ConnectionDone()))

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.factory.client.upstream_lost(reason)
