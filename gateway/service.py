"""The service tree: one service per listener (its port, its CRL and OCSP services), and the
monitor. ``make_gateway_service`` is the wiring; it takes what ``gateway.prepare`` loaded."""

from __future__ import annotations

import signal
import threading
from typing import Any

import treq
from OpenSSL import SSL
from twisted.application import service
from twisted.internet import defer, endpoints, task
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory

from gateway.config.model import Config, ConnectionLimits, GlobalSettings, ListenerSettings
from gateway.config.values import format_bind
from gateway.errors import GatewayError
from gateway.monitor import Monitor
from gateway.prepare import Prepared
from gateway.proxy.admission import Admission, RefusalLog, address_key
from gateway.proxy.relay import ClientProtocol, GatewayFactory
from gateway.proxy.upstream import upstream_connector
from gateway.revocation.checker import RevocationChecker
from gateway.revocation.crl_service import CrlCache, CrlService
from gateway.revocation.fetch import HttpFetcher
from gateway.revocation.ocsp_service import OcspStapler
from gateway.revocation.process import SubprocessProcessor
from gateway.status import CrlCheckStatus, ListenerStats, ListenerStatus
from gateway.tls.context import ServerConnectionCreator, build_context
from gateway.tls.material import TlsMaterial
from gateway.tls.verify import CertificateVerifier

log = Logger()

# If the first CRL round has not ended by then, the port accepts anyway (and the policy
# decides each client): a download may take crl_cache_http_timeout, processing may take
# as long again (the worker), and a persisted CRL is loaded first; plus a margin.
_READY_MARGIN = 30.0


def ready_timeout(crl_http_timeout: float) -> float:
    return crl_http_timeout * 2 + _READY_MARGIN


class ListenerTLSFactory(TLSMemoryBIOFactory):
    """TLS wrapping factory that admits each connection before any TLS work: connection
    caps and rates (``gateway.proxy.admission``); a refused connection is closed at once
    and counted, logged one by one up to a threshold per interval, then summarised."""

    noisy = False

    def __init__(
        self,
        creator: ServerConnectionCreator,
        wrapped: GatewayFactory,
        limits: ConnectionLimits,
        reactor: Any,
    ) -> None:
        super().__init__(creator, False, wrapped, clock=reactor)
        self.gateway = wrapped
        self.reactor = reactor
        self.admission = Admission(
            limits.max_connections,
            limits.max_connections_per_ip,
            limits.max_conn_rate,
            limits.max_conn_rate_per_ip,
            reactor.seconds(),
        )
        self.per_address = self.admission.per_address
        self.refusals = RefusalLog(REFUSALS_LOGGED_PER_INTERVAL)
        self._summary: Any = None  # the pending summary call, while refusals are suppressed
        self._keys: dict[Any, str] = {}  # admitted protocol -> its address key

    def buildProtocol(self, addr: Any) -> Any:
        host = getattr(addr, "host", str(addr))
        key = address_key(host) if self.per_address else ""
        refused = self.admission.admit(key, self.reactor.seconds())
        if refused is not None:
            self._refuse(refused, key or host, f"{host}:{getattr(addr, 'port', '')}")
            return None
        protocol = super().buildProtocol(addr)
        if protocol is None:  # pragma: no cover - the wrapped factory refused
            self.admission.release(key)
            return None
        self._keys[protocol] = key
        return protocol

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        key = self._keys.pop(p, None)
        if key is not None:
            self.admission.release(key)

    def _refuse(self, reason: str, key: str, peer: str) -> None:
        self.gateway.stats.refuse(reason)
        if self.refusals.note(reason, key):
            log.warn(
                "refused {listener} peer={peer} reason={reason}: {why}",
                listener=self.gateway.name,
                peer=peer,
                reason=reason,
                why=_REFUSAL_TEXT[reason],
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
                listener=self.gateway.name,
                summary=text,
                interval=REFUSAL_SUMMARY_INTERVAL,
            )

    def stop(self) -> None:
        """Log what is still suppressed (at shutdown)."""
        if self._summary is not None and self._summary.active():
            self._summary.cancel()
            self._summarise()


# Refusals before TLS: this many per interval are logged one by one, the rest summarised.
REFUSALS_LOGGED_PER_INTERVAL = 10
REFUSAL_SUMMARY_INTERVAL = 10.0
_REFUSAL_TEXT = {
    "too_many_connections": "listener at max_connections",
    "too_many_connections_per_ip": "address at max_connections_per_ip",
    "rate_limited": "listener above max_conn_rate",
    "rate_limited_per_ip": "address above max_conn_rate_per_ip",
}


def drain(
    factory: ListenerTLSFactory, reactor: Any, seconds: float, by: str, why: str
) -> defer.Deferred[int]:
    """Let the factory's connections end by themselves for ``seconds``, then end the rest
    (``ClientProtocol.stop``: each relayed session logged as closed by ``by``), and abort
    whatever has not closed two seconds later. Fires with the number the gateway ended."""
    done: defer.Deferred[int] = defer.Deferred()
    deadline = reactor.seconds() + seconds
    ended = [0]
    stage = ["wait"]

    def tick() -> None:
        if not factory.protocols:
            poll.stop()
            done.callback(ended[0])
            return
        now = reactor.seconds()
        if stage[0] == "wait" and now >= deadline:
            stage[0] = "stopping"
            for tls in list(factory.protocols):
                client = getattr(tls, "wrappedProtocol", None)
                if isinstance(client, ClientProtocol):
                    ended[0] += 1
                    client.stop(by, why)
        elif stage[0] == "stopping" and now >= deadline + _ABORT_AFTER:
            stage[0] = "aborting"
            for tls in list(factory.protocols):
                tls.transport.abortConnection()

    poll = task.LoopingCall(tick)
    poll.clock = reactor
    poll.start(_DRAIN_POLL, now=True)
    return done


_DRAIN_POLL = 0.1
_ABORT_AFTER = 2.0  # after a stop: time for close_notify and the broker side to close


class _QuietHTTP11ClientFactory(_HTTP11ClientFactory):
    noisy = False  # no "Starting factory" line for every CRL or OCSP fetch


def quiet_http_client(reactor: Any) -> treq.client.HTTPClient:
    """treq's HTTP client on the given reactor, without per-connection log noise."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    # HTTPConnectionPool takes no factory argument; this private attribute is the only way
    # to silence the per-connection "Starting factory" lines.
    pool._factory = _QuietHTTP11ClientFactory
    return treq.client.HTTPClient(Agent(reactor, pool=pool))


class ListenError(GatewayError):
    """A listener's address cannot be bound (in use, not ours, not allowed)."""

    def __init__(self, listener: str, bind: tuple[str, int], error: CannotListenError) -> None:
        cause = error.socketError
        text = getattr(cause, "strerror", None) or str(cause)
        super().__init__(
            "listen", f"cannot listen on {format_bind(bind)}: {text[:1].lower()}{text[1:]}"
        )
        self.listener = listener


class GatewayService(service.MultiService):
    """The top of the tree. A listener that cannot bind stops the start before anything
    else starts, as a ConfigError at the line that declared it."""

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except ListenError as e:
            raise self.config.error(e.listener, "", e.detail) from None

    def startService(self) -> None:
        super().startService()
        self.reactor.callWhenRunning(_stop_cleanly_on_sigterm, self.reactor)


def _stop_cleanly_on_sigterm(reactor: Any) -> None:
    """SIGTERM is the ordinary way to stop a service (systemd, docker, kill): stop the
    reactor (which runs the graceful drain) and exit 0. Twisted's own handler makes twistd
    end by re-raising the signal, which service managers read as a failure."""
    if not getattr(reactor, "running", False) or threading.current_thread() is not (
        threading.main_thread()
    ):
        return

    def on_term(signum: int, frame: Any) -> None:
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, on_term)


class PortService(service.Service):
    """Binds the listener's port in privilegedStartService (before twistd drops privileges).

    Until ``ready`` fires (the first CRL round is done), the port does not accept:
    connections wait in the kernel's backlog instead of meeting an empty CRL cache.
    """

    def __init__(
        self,
        endpoint: Any,
        bind: tuple[str, int],
        factory: Any,
        ready: defer.Deferred[None] | None,
        reactor: Any,
        ready_timeout: float,
        listener_name: str = "?",
    ) -> None:
        self.listener_name = listener_name
        self.endpoint = endpoint
        self.bind = bind
        self.factory = factory
        self.ready = ready
        self.reactor = reactor
        self.ready_timeout = ready_timeout
        self.port: Any = None
        self._ready_seen = False

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()
        if self._ready_seen:
            self.port.startReading()

    def _listen(self) -> None:
        if self.port is not None:
            return
        result: list[Any] = []
        self.endpoint.listen(self.factory).addBoth(result.append)
        if isinstance(result[0], Failure):
            failure = result[0]
            if isinstance(failure.value, CannotListenError):
                raise ListenError(self.listener_name, self.bind, failure.value) from None
            failure.raiseException()  # a port that cannot be bound stops start-up
        self.port = result[0]
        if self.ready is not None and not self.ready.called:
            self.port.stopReading()
            timer = self.reactor.callLater(self.ready_timeout, self._accept, "timeout")

            def on_ready(result: None) -> None:
                if timer.active():
                    timer.cancel()
                    self._accept("ready")

            self.ready.addCallback(on_ready)

    def _accept(self, why: str) -> None:
        if why == "timeout":
            log.warn("accepting connections before the first CRL round finished (timeout)")
        if self.running and self.port is not None:
            self.port.startReading()
        else:
            self._ready_seen = True  # startService will resume accepting

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if isinstance(self.factory, ListenerTLSFactory):
            self.factory.stop()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None


class ListenerService(service.MultiService):
    """One listener: its context, its port, its counters, its CRL and OCSP services."""

    def __init__(
        self,
        listener: ListenerSettings,
        material: TlsMaterial,
        globals_: GlobalSettings,
        reactor: Any,
        http_client: Any = None,
        crl_processor: Any = None,
    ) -> None:
        super().__init__()
        self.setName(listener.name)
        self.listener = listener
        self.material = material
        self.reactor = reactor
        self.shutdown_drain = globals_.shutdown_drain
        self.stats = ListenerStats(listener.name)
        http = HttpFetcher(http_client or quiet_http_client(reactor), reactor)
        self.crl_service: CrlService | None = None
        self.revocation: RevocationChecker | None = None
        if listener.crl is not None:
            cache = CrlCache(reactor, listener.crl.grace_period)
            assert material.ca_pem is not None  # CRL checking needs verify_peer and its CAs
            self.crl_service = CrlService(
                listener.name,
                listener.crl,
                globals_.crl_refresh_interval,
                globals_.crl_cache_dir,
                reactor,
                http,
                crl_processor or SubprocessProcessor(reactor),
                cache,
                material.ca_pem,
            )
            self.crl_service.setServiceParent(self)
            self.revocation = RevocationChecker(
                cache, listener.crl, self.crl_service, reactor, material.issuers
            )
        self.verifier = CertificateVerifier(self.revocation)
        self.stapler: OcspStapler | None = None
        if listener.ocsp is not None:
            assert material.ocsp is not None  # found, or the configuration was refused
            self.stapler = OcspStapler(
                listener.name, listener.ocsp, globals_.ocsp_cache_dir, reactor, http, material.ocsp
            )
            self.stapler.setServiceParent(self)
        self.creator = ServerConnectionCreator(self.build_context())
        self.factory = GatewayFactory(
            listener.name,
            listener.limits,
            listener.upstream,
            reactor,
            upstream_connector(reactor, listener.upstream),
            self.stats,
            self.revocation,
        )
        if self.crl_service is not None:
            self.crl_service.on_update = self.factory.sweep_revoked
        host, port = listener.bind
        server_endpoint: Any
        if ":" in host:
            server_endpoint = endpoints.TCP6ServerEndpoint(reactor, port, interface=host)
        else:
            server_endpoint = endpoints.TCP4ServerEndpoint(reactor, port, interface=host)
        self.port_service = PortService(
            server_endpoint,
            listener.bind,
            ListenerTLSFactory(self.creator, self.factory, listener.limits, reactor),
            self.crl_service.ready if self.crl_service is not None else None,
            reactor,
            ready_timeout(listener.crl.http_timeout) if listener.crl is not None else 0.0,
            listener.name,
        )
        self.port_service.setServiceParent(self)
        self._logged = False

    def status(self) -> ListenerStatus:
        """Everything an operator (or a status endpoint) wants about this listener, in one
        record: counters, each CRL source's state, the OCSP staple's state."""
        crl = None
        if self.crl_service is not None and self.revocation is not None:
            crl = CrlCheckStatus(
                held=len(self.revocation.cache.infos()),
                counts=dict(self.revocation.counts),
                sources=self.crl_service.status(),
            )
        ocsp = self.stapler.status() if self.stapler is not None else None
        return ListenerStatus(self.stats.snapshot(), crl, ocsp)

    def build_context(self) -> SSL.Context:
        """A new context for this listener, with the stapling callback installed.

        pyOpenSSL freezes a context once its first connection exists, so the callback goes
        in before the context is handed to the connection creator (here, and on a rebuild).
        """
        ctx = build_context(self.listener.name, self.listener.tls, self.material, self.verifier)
        if self.stapler is not None:
            self.stapler.install(ctx)
        return ctx

    def stopService(self) -> defer.Deferred[Any]:
        """Graceful stop: the port stops accepting (its service stops first), the CRL and
        OCSP services stop, live sessions get ``shutdown_drain`` to end, then are closed."""
        stopped = defer.maybeDeferred(super().stopService)
        tls_factory = self.port_service.factory
        count = len(tls_factory.protocols)
        if count:
            log.info(
                "stopping {listener}: {count} connection(s) get {drain:g}s to end",
                listener=self.listener.name,
                count=count,
                drain=self.shutdown_drain,
            )
        drained = drain(
            tls_factory, self.reactor, self.shutdown_drain, "shutdown", "the gateway is stopping"
        )
        return defer.gatherResults([stopped, drained])

    def startService(self) -> None:
        # Logged once every port is bound (privilegedStartService): a start that fails on
        # another listener's port does not claim this one listens.
        super().startService()
        for warning in self.material.warnings:
            log.warn("{warning}", warning=warning)
        self._log_listening()

    def _log_listening(self) -> None:
        if self._logged:
            return
        self._logged = True
        host, port = self.listener.bind
        up_host, up_port = self.listener.upstream.address
        log.info(
            "listener {listener} on {host}:{port} -> upstream {up_host}:{up_port} "
            "(verify={verify}, tls={tls})",
            listener=self.listener.name,
            host=host,
            port=port,
            up_host=up_host,
            up_port=up_port,
            verify="verify_peer" if self.listener.tls.verify_peer else "verify_none",
            tls=",".join(self.listener.tls.versions),
        )


def make_gateway_service(prepared: Prepared, reactor: Any) -> GatewayService:
    """The whole gateway: one ListenerService per listener, and the monitor."""
    config = prepared.config
    top = GatewayService(config, reactor)
    listeners = [
        ListenerService(listener, prepared.materials[listener.name], config.globals, reactor)
        for listener in config.listeners
    ]
    for listener_service in listeners:
        listener_service.setServiceParent(top)
    Monitor(
        reactor,
        config.globals.stats_log_interval,
        lambda: [ls.status() for ls in listeners],
    ).setServiceParent(top)
    return top
