"""The service tree: one service per listener (its TCP port, later its refreshers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import treq
from cryptography import x509
from OpenSSL import SSL
from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory

from gateway.config import Config, ListenerConfig
from gateway.metrics import ListenerStats
from gateway.monitor import Monitor
from gateway.proxy.relay import ConnectUpstream, GatewayFactory, UpstreamFactory
from gateway.revocation.checker import RevocationChecker
from gateway.revocation.crl_service import CrlCache, CrlService
from gateway.revocation.fetch import HttpFetcher
from gateway.revocation.ocsp import find_issuer, issuer_candidates, responder_url_of
from gateway.revocation.ocsp_service import OcspStapler
from gateway.revocation.process import SubprocessProcessor
from gateway.tls.context import CertificateVerifier, ServerConnectionCreator, build_context

log = Logger()


class ListenerTLSFactory(TLSMemoryBIOFactory):
    """TLS wrapping factory that enforces ``max_connections`` before any TLS work."""

    noisy = False

    def __init__(
        self,
        creator: ServerConnectionCreator,
        wrapped: GatewayFactory,
        reactor: Any,
    ) -> None:
        super().__init__(creator, False, wrapped, clock=reactor)
        self.gateway = wrapped

    def buildProtocol(self, addr: Any) -> Any:
        listener = self.gateway.listener
        if len(self.protocols) >= listener.max_connections:
            self.gateway.stats.refuse("too_many_connections")
            log.warn(
                "refused {listener} peer={peer} reason=too_many_connections: "
                "{count} connections open (max_connections)",
                listener=listener.name,
                peer=f"{getattr(addr, 'host', addr)}:{getattr(addr, 'port', '')}",
                count=len(self.protocols),
            )
            return None
        return super().buildProtocol(addr)


def upstream_connector(reactor: Any, listener: ListenerConfig) -> ConnectUpstream:
    """A function opening a TCP connection to the listener's broker.

    IP literals go straight to ``connectTCP`` (no resolver round trip, no endpoint wrapper
    in the relay's data path); host names go through HostnameEndpoint, which resolves them
    without blocking the reactor.
    """
    host, port = listener.upstream
    timeout = listener.upstream_connect_timeout
    if isIPAddress(host) or isIPv6Address(host):

        def connect_ip(factory: UpstreamFactory) -> Callable[[], None]:
            connector = reactor.connectTCP(host, port, factory, timeout=timeout)
            return connector.stopConnecting

        return connect_ip
    endpoint = endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout)

    def connect_name(factory: UpstreamFactory) -> Callable[[], None]:
        attempt = endpoint.connect(factory)
        attempt.addErrback(lambda reason: factory.clientConnectionFailed(None, reason))
        return attempt.cancel

    return connect_name


class _QuietHTTP11ClientFactory(_HTTP11ClientFactory):
    noisy = False  # no "Starting factory" line for every CRL or OCSP fetch


def quiet_http_client(reactor: Any) -> treq.client.HTTPClient:
    """treq's HTTP client on the given reactor, without per-connection log noise."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    pool._factory = _QuietHTTP11ClientFactory
    return treq.client.HTTPClient(Agent(reactor, pool=pool))


class PortService(service.Service):
    """Binds the listener's port in privilegedStartService (before twistd drops privileges).

    Until ``ready`` fires (the first CRL round is done), the port does not accept:
    connections wait in the kernel's backlog instead of meeting an empty CRL cache.
    """

    def __init__(
        self,
        endpoint: Any,
        factory: Any,
        ready: defer.Deferred[None] | None,
        reactor: Any,
        ready_timeout: float,
    ) -> None:
        self.endpoint = endpoint
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
            result[0].raiseException()  # a port that cannot be bound stops start-up
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
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None


class ListenerService(service.MultiService):
    """One listener: its context, its port, its counters, its CRL service."""

    def __init__(
        self,
        listener: ListenerConfig,
        reactor: Any,
        http_client: Any = None,
        crl_processor: Any = None,
    ) -> None:
        super().__init__()
        self.setName(listener.name)
        self.listener = listener
        self.stats = ListenerStats(listener.name)
        self.crl_service: CrlService | None = None
        checker = None
        if listener.enable_crl_cache:
            checker = self._make_crl(listener, reactor, http_client, crl_processor)
        self.verifier = CertificateVerifier(checker)
        self.stapler: OcspStapler | None = None
        if listener.enable_ocsp_stapling:
            self.stapler = self._make_stapler(listener, reactor, http_client)
        self.creator = ServerConnectionCreator(self.build_context())
        self.factory = GatewayFactory(
            listener, reactor, upstream_connector(reactor, listener), self.stats, checker
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
            ListenerTLSFactory(self.creator, self.factory, reactor),
            self.crl_service.ready if self.crl_service is not None else None,
            reactor,
            listener.crl_cache_http_timeout * 2 + 30,
        )
        self.port_service.setServiceParent(self)

    def status(self) -> dict[str, Any]:
        """Everything an operator (or a status endpoint) wants about this listener, in one
        object: counters, each CRL source's state, the OCSP staple's state."""
        out: dict[str, Any] = {"stats": self.stats.snapshot()}
        if self.crl_service is not None and self.factory.revocation is not None:
            out["crl"] = {
                "held": len(self.factory.revocation.cache.current_infos()),
                "counts": dict(self.factory.revocation.counts),
                "sources": self.crl_service.snapshot(),
            }
        if self.stapler is not None:
            out["ocsp"] = dict(self.stapler.snapshot(), staples_sent=self.stapler.requests_stapled)
        return out

    def build_context(self) -> SSL.Context:
        """A new context for this listener, with the stapling callback installed.

        pyOpenSSL freezes a context once its first connection exists, so the callback goes
        in before the context is handed to ServerConnectionCreator (here, and on a rebuild).
        """
        ctx = build_context(self.listener, self.verifier)
        if self.stapler is not None:
            self.stapler.install(ctx)
        return ctx

    def _make_stapler(
        self, listener: ListenerConfig, reactor: Any, http_client: Any
    ) -> OcspStapler:
        def load(path: str | None) -> list[x509.Certificate] | None:
            if path is None:
                return None
            with open(path, "rb") as f:
                return x509.load_pem_x509_certificates(f.read())

        chain = load(listener.certfile) or []
        candidates = issuer_candidates(
            chain, load(listener.ocsp_issuer_pem), load(listener.cacertfile)
        )
        issuer = find_issuer(chain[0], candidates)
        responder = listener.ocsp_responder_url or responder_url_of(chain[0])
        assert issuer is not None and responder is not None  # checked by the configuration
        stapler = OcspStapler(
            listener,
            reactor,
            HttpFetcher(http_client or quiet_http_client(reactor), reactor),
            chain[0],
            issuer,
            responder,
        )
        stapler.setServiceParent(self)
        return stapler

    def _make_crl(
        self, listener: ListenerConfig, reactor: Any, http_client: Any, processor: Any
    ) -> RevocationChecker:
        assert listener.cacertfile is not None
        with open(listener.cacertfile, "rb") as f:
            trust_pem = f.read()
        if http_client is None:
            http_client = quiet_http_client(reactor)
        cache = CrlCache(reactor, listener.crl_grace_period)
        self.crl_service = CrlService(
            listener,
            reactor,
            HttpFetcher(http_client, reactor),
            processor or SubprocessProcessor(reactor),
            cache,
            trust_pem,
        )
        self.crl_service.setServiceParent(self)
        return RevocationChecker(
            cache, listener.crl_expired_policy, self.crl_service, listener.crl_cache_from_cert
        )

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._log_listening()

    def startService(self) -> None:
        super().startService()
        self._log_listening()

    def _log_listening(self) -> None:
        if getattr(self, "_logged", False):
            return
        self._logged = True
        host, port = self.listener.bind
        up_host, up_port = self.listener.upstream
        log.info(
            "listener {listener} on {host}:{port} -> upstream {up_host}:{up_port} "
            "(verify={verify}, tls={tls})",
            listener=self.listener.name,
            host=host,
            port=port,
            up_host=up_host,
            up_port=up_port,
            verify=self.listener.verify,
            tls=",".join(self.listener.tls_versions),
        )


def make_gateway_service(config: Config, reactor: Any) -> service.MultiService:
    """The whole gateway: one ListenerService per listener, and the monitor."""
    top = service.MultiService()
    listeners = [ListenerService(listener, reactor) for listener in config.listeners]
    for listener_service in listeners:
        listener_service.setServiceParent(top)

    def extra(name: str) -> dict[str, Any]:
        """The CRL and OCSP figures of a listener's stats line."""
        for ls in listeners:
            if ls.listener.name != name:
                continue
            status = ls.status()
            fields: dict[str, Any] = {}
            if "crl" in status:
                fields["crls_held"] = status["crl"]["held"]
                fields.update({f"crl_{k}": v for k, v in status["crl"]["counts"].items()})
            if "ocsp" in status:
                fields["ocsp_status"] = status["ocsp"]["status"] or "none"
                fields["ocsp_next_update"] = status["ocsp"]["next_update"]
                fields["ocsp_staples_sent"] = status["ocsp"]["staples_sent"]
            return fields
        return {}

    Monitor(
        reactor,
        config.listeners[0].stats_log_interval,
        lambda: [ls.stats for ls in listeners],
        extra,
    ).setServiceParent(top)
    return top
