"""A listener's parts, and what passes between a listener and its parts and role (pure
records and small classes; no service):

- ``ListenerParts``: everything one listener runs with, for one configuration generation;
  ``PartsBox``: the one reference through which its factories read the current parts;
- ``ListenerEvents``: what a listener is told by its parts, given to their constructors;
- ``ListenerHandle``: what a role is given of a listener (values and callables, never the
  listener service itself).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import attrs
from OpenSSL import SSL

from gateway.choices import AclReadMode, DenyAction, ProxyVersion, RateAction, Transport
from gateway.config.model import (
    ConnectionLimits,
    GlobalSettings,
    IdentitySettings,
    ListenerSettings,
    WebSocketSettings,
)
from gateway.config.tenants import tenant_view
from gateway.config.values import format_bind
from gateway.deny import DenyList
from gateway.mqtt.acl import Acl
from gateway.mqtt.limits import DeviceLimits
from gateway.proxy.authorize import Authorizer
from gateway.proxy.pool import BrokerPool
from gateway.proxy.session import SessionLimits
from gateway.proxy.upstream import HealthChecker, PoolConnector
from gateway.revocation.checker import RevocationChecker
from gateway.revocation.ocsp_client import OcspClient
from gateway.tls.material import TlsMaterial


@attrs.frozen(eq=False)
class ListenerParts:
    """Everything one listener runs with, for one configuration generation."""

    settings: ListenerSettings
    material: TlsMaterial
    globals: GlobalSettings
    crl: Any  # IRevocationSource, or None without CRL checking
    revocation: RevocationChecker | None  # with CRL or OCSP checking of clients
    stapler: Any  # IStapler, or None without stapling
    context: SSL.Context | None  # None on a ws listener (no TLS)
    pool: BrokerPool
    connector: PoolConnector
    health: HealthChecker | None
    session_limits: SessionLimits
    ocsp_client: OcspClient | None = None  # with OCSP checking of clients
    authorizer: Authorizer | None = None  # with auth_http_url
    # tenant.<id>.upstream: each such tenant's broker pool, connector and health checks
    tenant_upstreams: dict[str, tuple[BrokerPool, PoolConnector, HealthChecker | None]] = (
        attrs.field(factory=dict)
    )
    # the tenants whose hook (auth_http_url, _failure_policy) is their own, not the listener's
    tenant_authorizers: dict[str, Authorizer] = attrs.field(factory=dict)
    # with stapling: each tenant's certificate's stapler (IStapler), installed on its context
    tenant_staplers: dict[str, Any] = attrs.field(factory=dict)

    # What the relay reads (``proxy.relay.RelayParts``).
    def connector_for(self, tenant: str | None) -> PoolConnector:
        own = self.tenant_upstreams.get(tenant) if tenant is not None else None
        return own[1] if own is not None else self.connector

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def identity(self) -> IdentitySettings:
        return self.settings.identity

    @property
    def upstream_name(self) -> str:
        return format_bind(self.settings.upstream.address)

    @property
    def upstream_proxy_protocol(self) -> ProxyVersion | None:
        return self.settings.upstream.proxy_protocol

    @property
    def log_connect(self) -> bool:
        return self.settings.log_connect

    @property
    def acl(self) -> Acl | None:
        return self.material.acl

    def acl_for(self, tenant: str | None) -> Acl | None:
        """Read for every PUBLISH and SUBSCRIBE a policy edge judges: one lookup."""
        if tenant is not None:
            own = self._tenant_acls.get(tenant)
            if own is not None:
                return own
        return self.material.acl

    @functools.cached_property
    def _tenant_acls(self) -> dict[str, Acl]:
        return {t.settings.id: t.acl for t in self.material.tenants if t.acl is not None}

    def settings_for(self, tenant: str | None) -> ListenerSettings:
        """The settings a device of ``tenant`` is handled by: the tenant's own values of
        some listener keys (``config.tenants.OVERRIDES``) over the listener's."""
        if tenant is None:
            return self.settings
        return self._tenant_views.get(tenant, self.settings)

    @functools.cached_property
    def _tenant_views(self) -> dict[str, ListenerSettings]:
        return {t.id: tenant_view(self.settings, t) for t in self.settings.tenants if t.overrides}

    def identity_for(self, tenant: str | None) -> IdentitySettings:
        return self.settings_for(tenant).identity

    def authorizer_for(self, tenant: str | None) -> Authorizer | None:
        if tenant is not None and tenant in self.tenant_authorizers:
            return self.tenant_authorizers[tenant]
        return self.authorizer

    def device_limits_for(self, tenant: str | None) -> DeviceLimits | None:
        """The per-device rates the relay paces to (None: the relay's short path)."""
        if tenant is None or tenant not in self._tenant_views:
            return self.device_limits
        return _device_limits(self._tenant_views[tenant].limits)

    @property
    def deny(self) -> DenyList | None:
        return self.material.deny

    @functools.cached_property
    def tenants_enabled(self) -> frozenset[str]:
        """The tenants served now (their devices; the others' are refused and closed)."""
        return frozenset(t.id for t in self.settings.tenants if t.enabled)

    @property
    def websocket(self) -> WebSocketSettings | None:
        """MQTT over WebSocket's settings where devices may use it (None: MQTT only)."""
        return self.settings.websocket if self.settings.websocket_enabled else None

    @property
    def websocket_only(self) -> bool:
        """A wss or ws listener: every device speaks WebSocket."""
        return self.settings.transport is not Transport.SSL

    @property
    def server_reference(self) -> str | None:
        return self.globals.drain_server_reference

    @property
    def plain(self) -> bool:
        """A ws listener: no TLS on its connections (a load balancer in front ended it)."""
        return not self.settings.transport.tls

    @property
    def acl_deny_action(self) -> DenyAction:
        return self.settings.acl.deny_action

    @property
    def acl_read_mode(self) -> AclReadMode:
        return self.settings.acl.read_mode

    @functools.cached_property
    def device_limits(self) -> DeviceLimits | None:
        """The listener's own devices' rates (None: the relay's short path)."""
        return _device_limits(self.settings.limits)

    def services(self) -> list[Any]:
        """The services these parts run (CRL source, OCSP client, stapler, broker checks)."""
        tenants = [health for _, _, health in self.tenant_upstreams.values()]
        tenants += self.tenant_staplers.values()
        own = (self.crl, self.ocsp_client, self.stapler, self.health, *tenants)
        return [s for s in own if s is not None]


def _device_limits(limits: ConnectionLimits) -> DeviceLimits | None:
    if limits.messages_rate is None and limits.bytes_rate is None:
        return None
    return DeviceLimits(
        limits.messages_rate,
        limits.messages_burst,
        limits.bytes_rate,
        limits.bytes_burst,
        disconnect=limits.rate_limit_action == RateAction.DISCONNECT,
    )


@attrs.define(eq=False)
class PartsBox:
    """The one reference through which a listener's factories read its current parts."""

    parts: ListenerParts


@attrs.frozen
class ListenerEvents:
    """What a listener hears from its parts; each part is given its callable when it is
    built (a reload's new parts get the same ones)."""

    crl_updated: Callable[..., None]  # new CRLs are in force (the CRLs, or nothing)
    ocsp_revoked: Callable[..., None]  # an OCSP answer says a certificate is revoked
    staple_changed: Callable[..., None]  # the listener's OCSP staple changed (its DER)


@attrs.frozen
class ListenerHandle:
    """What a role is given of one listener: its name, its current parts, what its port
    serves, and what to call; never the listener service itself."""

    name: str
    parts: Callable[[], ListenerParts]  # the parts in force now
    entry: Any  # the factory its port serves (proxy.entry.EntryFactory)
    creator: Any  # its TLS connection creator (the port of tls_io = transport needs it)
    reactor: Any
    stop_accepting: Callable[[], None]  # the port stopped: log what the gate still holds
