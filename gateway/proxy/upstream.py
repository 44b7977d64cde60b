"""Opening the broker connection of one client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import endpoints
from twisted.internet.abstract import isIPAddress, isIPv6Address

from gateway.config.model import UpstreamSettings
from gateway.proxy.relay import ConnectUpstream, UpstreamFactory


def upstream_connector(reactor: Any, upstream: UpstreamSettings) -> ConnectUpstream:
    """A function opening a TCP connection to the listener's broker.

    IP literals go straight to ``connectTCP`` (no resolver round trip, no endpoint wrapper
    in the relay's data path); host names go through HostnameEndpoint, which resolves them
    without blocking the reactor.
    """
    host, port = upstream.address
    timeout = upstream.connect_timeout
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
