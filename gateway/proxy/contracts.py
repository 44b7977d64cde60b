"""What the parts of the relay know of each other, as protocols (no implementation here):
the relay (``relay.ClientProtocol``), its factory (``factory.GatewayFactory``) and the
broker link (``broker_link``) import these, never each other's classes, so no part reaches
back into its owner.

- ``RelayParts``: what the relay reads of a listener's current parts (a reload replaces
  the whole record; the next connection reads the new one);
- ``ClientHome``: what a client protocol reads of its listener (``GatewayFactory``);
- ``Downstream``: what the broker connection tells the device side (``ClientProtocol``);
- ``Revocation``: what the relay asks of revocation checking (``RevocationChecker``);
- ``ConnectUpstream``: opens the broker connection for one client.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from cryptography import x509
from twisted.internet import defer
from twisted.python.failure import Failure

from gateway.choices import AclReadMode, DenyAction, ProxyVersion
from gateway.config.model import IdentitySettings, WebSocketSettings
from gateway.deny import DenyList
from gateway.mqtt.acl import Acl
from gateway.mqtt.limits import DeviceLimits
from gateway.peer import PeerVerification, Pending
from gateway.proxy.authorize import Authorizer
from gateway.proxy.session import SessionLimits
from gateway.reasons import Reason
from gateway.status import ListenerStats


class CrlHold(Protocol):
    """Decides a client held after its CONNECT while its leaf's CRL is fetched."""

    def decide_later(self, pending: Pending) -> defer.Deferred[tuple[Reason | None, str]]:
        """Fires with (refusal reason or None, detail); never fails."""
        ...


class LiveRevocation(Protocol):
    def chain_revoked(self, chain: Sequence[tuple[bytes, int]]) -> bool: ...


class Revocation(CrlHold, LiveRevocation, Protocol):
    """What the relay asks of CRL checking (``RevocationChecker``)."""

    def check_resumed(
        self, leaf: x509.Certificate, serial: int, verification: PeerVerification
    ) -> tuple[Reason, str] | None: ...

    def track(self, verification: PeerVerification) -> tuple[Any, ...]: ...

    def untrack(self, tracked: tuple[Any, ...]) -> None: ...


class Downstream(Protocol):
    """What the broker connection tells the device side of its session."""

    def upstream_connected(self, upstream: Any) -> None:
        """The broker connection is up (``upstream``: its protocol, with a transport)."""

    def upstream_failed(self, reason: Failure, broker: str | None = None) -> None:
        """No broker could be reached."""

    def upstream_lost(self, half: bool = False, why: str = "") -> None:
        """The broker closed (``half``: only its sending side)."""

    def from_broker(self, data: bytes) -> None:
        """The broker's bytes, for the device."""

    def upstream_tls(self, resumed: bool) -> None:
        """A TLS handshake with the broker completed (counted per listener)."""


# Opens the broker connection for one client (its ``Downstream`` side, and its client id for
# a pool balanced by client id): the client is told the outcome (``upstream_connected`` or
# ``upstream_failed``); returns a function that cancels the attempt.
ConnectUpstream = Callable[[Downstream, str], Callable[[], None]]


class ListenerRules(Protocol):
    """What a connection is handled by on its listener, as the current parts say."""

    @property
    def session_limits(self) -> SessionLimits: ...
    @property
    def revocation(self) -> Revocation | None: ...
    def identity_for(self, tenant: str | None) -> IdentitySettings: ...
    @property
    def upstream_name(self) -> str: ...
    @property
    def upstream_proxy_protocol(self) -> ProxyVersion | None: ...
    @property
    def log_connect(self) -> bool: ...
    def device_limits_for(self, tenant: str | None) -> DeviceLimits | None: ...
    @property
    def acl(self) -> Acl | None: ...
    def acl_for(self, tenant: str | None) -> Acl | None: ...
    @property
    def acl_deny_action(self) -> DenyAction: ...
    @property
    def acl_read_mode(self) -> AclReadMode: ...
    @property
    def deny(self) -> DenyList | None: ...
    def authorizer_for(self, tenant: str | None) -> Authorizer | None: ...
    @property
    def tenants_enabled(self) -> frozenset[str]: ...
    @property
    def websocket(self) -> WebSocketSettings | None: ...
    @property
    def websocket_only(self) -> bool: ...
    @property
    def plain(self) -> bool: ...
    @property
    def server_reference(self) -> str | None: ...


class RelayParts(ListenerRules, Protocol):
    """What the relay reads of a listener's current parts (``gateway.parts.ListenerParts``):
    a reload replaces the whole record, and the next connection reads the new one."""

    @property
    def name(self) -> str: ...
    @property
    def connector(self) -> ConnectUpstream: ...
    def connector_for(self, tenant: str | None) -> ConnectUpstream: ...


class HoldsParts(Protocol):
    @property
    def parts(self) -> RelayParts: ...


class ClientHome(ListenerRules, Protocol):
    """What a client protocol reads of its listener (``factory.GatewayFactory``): the
    listener's name, clock and counters, its live sessions, and the current parts."""

    name: str
    reactor: Any  # IReactorTime
    stats: ListenerStats
    live: set[Any]
    on_closed: Callable[[Any], None] | None

    @property
    def connect_upstream(self) -> ConnectUpstream: ...
    def connector_for(self, tenant: str | None) -> ConnectUpstream: ...

    def denial_logged(self) -> bool: ...
