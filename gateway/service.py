"""The service tree: one service per listener (its TCP port, later its refreshers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from gateway.config import Config, ListenerConfig
from gateway.metrics import ListenerStats
from gateway.proxy.relay import ConnectUpstream, GatewayFactory, UpstreamFactory
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


class ListenerService(service.MultiService):
    """One listener: its context, its port, its counters."""

    def __init__(self, listener: ListenerConfig, reactor: Any) -> None:
        super().__init__()
        self.setName(listener.name)
        self.listener = listener
        self.stats = ListenerStats(listener.name)
        self.verifier = CertificateVerifier()
        self.creator = ServerConnectionCreator(build_context(listener, self.verifier))
        self.factory = GatewayFactory(
            listener, reactor, upstream_connector(reactor, listener), self.stats
        )
        host, port = listener.bind
        server_endpoint: Any
        if ":" in host:
            server_endpoint = endpoints.TCP6ServerEndpoint(reactor, port, interface=host)
        else:
            server_endpoint = endpoints.TCP4ServerEndpoint(reactor, port, interface=host)
        port_service = StreamServerEndpointService(
            server_endpoint, ListenerTLSFactory(self.creator, self.factory, reactor)
        )
        # A port that cannot be bound stops start-up instead of being logged and ignored.
        port_service._raiseSynchronously = True
        port_service.setServiceParent(self)

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
    """The whole gateway: a MultiService with one ListenerService per listener."""
    top = service.MultiService()
    for listener in config.listeners:
        ListenerService(listener, reactor).setServiceParent(top)
    return top
