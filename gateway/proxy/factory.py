"""The factory of a listener's client protocols, and what the relay reads of the listener:
its current parts, through one reference (a reload replaces the record, the next connection
reads the new one), and the live sessions (swept after a CRL update)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.internet.interfaces import IReactorTime

from gateway.choices import AclReadMode, DenyAction, ProxyVersion
from gateway.config.model import ConnectionLimits, IdentitySettings, WebSocketSettings
from gateway.deny import DenyList
from gateway.mqtt.acl import Acl
from gateway.mqtt.limits import DeviceLimits
from gateway.proxy import session as S
from gateway.proxy.authorize import Authorizer
from gateway.proxy.contracts import ConnectUpstream, HoldsParts, Revocation
from gateway.proxy.handshake import deny_refusal, peer_certificate
from gateway.proxy.relay import ClientProtocol
from gateway.reasons import Reason
from gateway.status import ListenerStats


def session_limits(limits: ConnectionLimits, authorize: bool = False) -> S.SessionLimits:
    return S.SessionLimits(
        limits.handshake_timeout, limits.connect_timeout, limits.max_packet_size, authorize
    )


class GatewayFactory(protocol.Factory):
    """Builds ``ClientProtocol`` for one listener (wrapped by the TLS factory); reads the
    listener's settings and collaborators through ``box.parts``."""

    noisy = False

    def __init__(
        self,
        box: HoldsParts,
        reactor: IReactorTime,
        stats: ListenerStats,
        cooperate: Callable[[Iterator[None]], task.CooperativeTask[Iterator[None]]],
        on_closed: Callable[[ClientProtocol], None] | None = None,
    ) -> None:
        self.box = box
        self.name = box.parts.name
        self.reactor = reactor
        self.stats = stats
        self._cooperate = cooperate
        self._denials_since = 0.0  # the acl_file denials logged in this 10-second window
        self._denials_logged = 0
        self.live: set[ClientProtocol] = set()  # connections in the relay state
        # Told when a client connection is gone (with TLS on the socket, no wrapping
        # factory hears it: the entry's gate does, through this).
        self.on_closed = on_closed

    @property
    def session_limits(self) -> S.SessionLimits:
        return self.box.parts.session_limits

    @property
    def connect_upstream(self) -> ConnectUpstream:
        return self.box.parts.connector

    def connector_for(self, tenant: str | None) -> ConnectUpstream:
        """The brokers of the tenant the device's name (or CA) chose, else the listener's."""
        return self.box.parts.connector_for(tenant)

    @property
    def revocation(self) -> Revocation | None:
        return self.box.parts.revocation

    def identity_for(self, tenant: str | None) -> IdentitySettings:
        """peer_cert_as_*: the tenant's own, else the listener's."""
        return self.box.parts.identity_for(tenant)

    @property
    def upstream_name(self) -> str:
        return self.box.parts.upstream_name

    @property
    def upstream_proxy_protocol(self) -> ProxyVersion | None:
        return self.box.parts.upstream_proxy_protocol

    def device_limits_for(self, tenant: str | None) -> DeviceLimits | None:
        """The rates of the tenant's devices (its own, else the listener's)."""
        return self.box.parts.device_limits_for(tenant)

    @property
    def acl(self) -> Acl | None:
        return self.box.parts.acl

    def acl_for(self, tenant: str | None) -> Acl | None:
        """The rules of the tenant the device's name (or CA) chose, else the listener's."""
        return self.box.parts.acl_for(tenant)

    @property
    def deny(self) -> DenyList | None:
        return self.box.parts.deny

    def authorizer_for(self, tenant: str | None) -> Authorizer | None:
        """The hook asked about the tenant's devices (its own, else the listener's)."""
        return self.box.parts.authorizer_for(tenant)

    @property
    def tenants_enabled(self) -> frozenset[str]:
        return self.box.parts.tenants_enabled

    @property
    def acl_deny_action(self) -> DenyAction:
        return self.box.parts.acl_deny_action

    @property
    def acl_read_mode(self) -> AclReadMode:
        return self.box.parts.acl_read_mode

    @property
    def websocket(self) -> WebSocketSettings | None:
        return self.box.parts.websocket

    @property
    def websocket_only(self) -> bool:
        return self.box.parts.websocket_only

    @property
    def plain(self) -> bool:
        return self.box.parts.plain

    @property
    def server_reference(self) -> str | None:
        """drain_server_reference: where a drain sends MQTT 5 devices (0x9C)."""
        return self.box.parts.server_reference

    def denial_logged(self) -> bool:
        """Whether one more denial line may be logged now: 10 per 10 seconds per
        listener (the rest are counted in mqttgw_acl_denied_total)."""
        now = self.reactor.seconds()
        if now - self._denials_since >= 10.0:
            self._denials_since, self._denials_logged = now, 0
        self._denials_logged += 1
        return self._denials_logged <= 10

    @property
    def log_connect(self) -> bool:
        return self.box.parts.log_connect

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
                if client.session.state is S.State.RELAY and checker.chain_revoked(
                    client.verification.chain
                ):
                    client.revoke_session()
                yield None

        return self._cooperate(sweep()).whenDone().addCallback(lambda _: None)

    def sweep_denied(self) -> defer.Deferred[None]:
        """After a reload changed deny_file: close the live sessions it now names (their
        certificates as OpenSSL keeps them), cooperatively as ``sweep_revoked``."""
        deny = self.deny

        def sweep() -> Iterator[None]:
            for client in list(self.live):
                if client.session.state is S.State.RELAY:
                    cert = peer_certificate(client.transport)
                    refusal = deny_refusal(deny, cert) if cert is not None else None
                    if refusal is not None:
                        client.revoke_session(*refusal)
                yield None

        if not deny:
            return defer.succeed(None)
        return self._cooperate(sweep()).whenDone().addCallback(lambda _: None)

    def sweep_tenants(self) -> defer.Deferred[None]:
        """After a reload changed the tenants: close the live sessions of a tenant now
        disabled or removed (MQTT 5: DISCONNECT 0x98, administrative action)."""
        served = self.tenants_enabled

        def sweep() -> Iterator[None]:
            for client in list(self.live):
                tenant = client.record.tenant
                if tenant is not None and tenant not in served:
                    why = f"tenant {tenant} was disabled or removed by a reload"
                    client.revoke_session(Reason.TENANT_DISABLED, why)
                yield None

        return self._cooperate(sweep()).whenDone().addCallback(lambda _: None)
