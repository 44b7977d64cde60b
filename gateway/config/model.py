"""The configuration as frozen, typed settings: global settings apart, and per listener one
record per concern. Each service takes the record it uses; mypy checks every field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from gateway.choices import (
    AclDefault,
    AclReadMode,
    Affinity,
    Balance,
    DenyAction,
    FailurePolicy,
    HealthCheck,
    IdentitySource,
    OcspCheck,
    OcspMethod,
    ProxyVersion,
    RateAction,
    TlsIo,
    Transport,
    WithCrl,
)
from gateway.config.keys import KEYS
from gateway.errors import ConfigError

# Defaults live in the key table, once: a field with a default takes its key's, by the key's
# model path (from ListenerSettings for a listener key, from GlobalSettings for a global one).
_DEFAULTS = {key.attr: key.default for key in KEYS}


def _default(path: str) -> Any:
    return _DEFAULTS[path]


@attrs.frozen
class GlobalSettings:
    """Settings of the whole gateway (top-level keys only)."""

    crl_refresh_interval: float = _default("crl_refresh_interval")
    crl_cache_dir: str | None = _default("crl_cache_dir")
    ocsp_cache_dir: str | None = _default("ocsp_cache_dir")
    stats_log_interval: float = _default("stats_log_interval")
    shutdown_drain: float = _default("shutdown_drain")
    drain_rate: float | None = _default("drain_rate")  # None: auto
    drain_ready_delay: float = _default("drain_ready_delay")
    drain_server_reference: str | None = _default("drain_server_reference")
    reload_drain: float = _default("reload_drain")
    admin_listen: tuple[str, int] | None = _default("admin_listen")
    admin_token_file: str | None = _default("admin_token_file")
    admin_open_read: bool = _default("admin_open_read")
    workers: int = _default("workers")  # 0: auto (one per usable CPU)
    worker_affinity: Affinity = _default("worker_affinity")
    watch_files: bool = _default("watch_files")
    takeover_socket: str | None = _default("takeover_socket")
    watch_files_interval: float = _default("watch_files_interval")


@attrs.frozen
class TlsSettings:
    """What the listener's TLS context is built from (the files are read into TlsMaterial)."""

    certfile: str | None  # None only on a ws listener (no TLS)
    keyfile: str | None
    cacertfile: str | None
    verify_peer: bool
    fail_if_no_peer_cert: bool
    depth: int
    profile: str
    versions: tuple[str, ...]
    ciphers: tuple[str, ...]  # effective: the profile's where not set
    groups: tuple[str, ...]
    honor_cipher_order: bool
    io: TlsIo = _default("tls.io")
    alpn: tuple[str, ...] = _default("tls.alpn")  # offered, in order of preference
    sni_strict: bool = _default("tls.sni_strict")  # refuse a name no tenant serves


@attrs.frozen
class TenantSettings:
    """A certificate served for some server names on a listener (``tenant.<id>.*``): chosen
    by the name the client sends (SNI); the listener's other settings apply."""

    id: str
    server_names: tuple[str, ...]  # lower case; "*.example.com" matches one label
    certfile: str
    keyfile: str
    cacertfile: str | None = None  # its own device CAs (None: the listener's)
    enabled: bool = True  # false: its devices refused, its live sessions closed at reload
    match_ca: str | None = None  # CAs whose devices are its own when they send no name
    upstream: tuple[tuple[str, int], ...] | None = None  # its own broker(s): the listener's
    acl_file: str | None = None  # its own topic rules (None: the listener's)
    # Its own values of some listener keys: (model path, value), e.g. ("crl.urls", (...)).
    overrides: tuple[tuple[str, Any], ...] = ()


@attrs.frozen
class ConnectionLimits:
    """Per-connection time and size limits, and the listener's connection cap."""

    handshake_timeout: float
    connect_timeout: float
    max_packet_size: int
    max_connections: int
    max_connections_per_ip: int = _default("limits.max_connections_per_ip")  # 0: no limit
    max_conn_rate: int = _default("limits.max_conn_rate")  # per second; 0: no limit
    max_conn_rate_per_ip: int = _default("limits.max_conn_rate_per_ip")
    # Per device, in the relay (None: not limited): PUBLISH packets and bytes per second.
    messages_rate: float | None = _default("limits.messages_rate")
    messages_burst: int = _default("limits.messages_burst")
    bytes_rate: float | None = _default("limits.bytes_rate")
    bytes_burst: int = _default("limits.bytes_burst")
    rate_limit_action: RateAction = _default("limits.rate_limit_action")


@attrs.frozen
class UpstreamTls:
    """TLS to the broker: its CA, the name its certificate must carry, and optionally the
    gateway's own client certificate."""

    cacertfile: str
    server_name: str | None  # None: the broker's host as written in upstream
    certfile: str | None = None
    keyfile: str | None = None
    session_reuse: bool = _default("upstream.tls.session_reuse")


@attrs.frozen
class UpstreamSettings:
    """The broker(s) behind the listener: the pool, its balancing and health, the
    transport (TCP or TLS) and the PROXY header sent first."""

    addresses: tuple[tuple[str, int], ...]
    connect_timeout: float
    balance: Balance = _default("upstream.balance")
    down_time: float = _default("upstream.down_time")
    check_interval: float = _default("upstream.check_interval")  # 0: no active check
    check: HealthCheck = _default("upstream.check")
    check_client_id: str = _default("upstream.check_client_id")
    tls: UpstreamTls | None = None
    proxy_protocol: ProxyVersion | None = _default("upstream.proxy_protocol")

    @property
    def address(self) -> tuple[str, int]:
        """The first broker (a pool of one is today's single upstream)."""
        return self.addresses[0]


@attrs.frozen
class IdentitySettings:
    """What of the verified client certificate replaces the CONNECT's user name and client
    id (EMQX's peer_cert_as_username / peer_cert_as_clientid): cn, dn, crt, pem, md5."""

    username: IdentitySource | None = _default("identity.username")
    client_id: IdentitySource | None = _default("identity.client_id")
    deny_file: str | None = _default("identity.deny_file")  # certificates refused by name

    @property
    def rewrites(self) -> bool:
        """Whether the CONNECT is rewritten with what the certificate gives."""
        return self.username is not None or self.client_id is not None


@attrs.frozen
class FrontSettings:
    """What comes before TLS on the listener: a PROXY header from a load balancer."""

    proxy_protocol: bool = _default("front.proxy_protocol")
    proxy_protocol_timeout: float = _default("front.proxy_protocol_timeout")


@attrs.frozen
class CrlSettings:
    """CRL checking of client certificates (present only when enabled)."""

    urls: tuple[str, ...]
    http_timeout: float
    max_size: int
    expired_policy: FailurePolicy
    grace_period: float
    from_cert: bool
    capacity: int


@attrs.frozen
class OcspSettings:
    """OCSP stapling of the listener's own certificate (present only when enabled)."""

    responder_url: str | None
    issuer_pem: str | None
    refresh_interval: float
    http_timeout: float
    request_method: OcspMethod
    nonce: bool


@attrs.frozen
class ClientOcspSettings:
    """OCSP checking of client certificates (present only when enabled)."""

    mode: OcspCheck  # leaf or chain (off: no section)
    responder_url: str | None  # overrides each certificate's AIA
    http_timeout: float
    cache_size: int
    refresh_interval: float  # live sessions' answers asked again this often
    failure_policy: FailurePolicy  # no answer, an unusable one, or 'unknown'
    grace_period: float  # an answer still used this long past its nextUpdate
    max_age: float  # an answer without nextUpdate is used this long after thisUpdate
    max_requests: int  # requests in flight to one responder; more wait in a queue
    with_crl: WithCrl  # when CRL checking is on too


@attrs.frozen
class AclSettings:
    """Topic rules bound to the certificate (a Mosquitto ACL file), per listener."""

    file: str | None = _default("acl.file")
    default: AclDefault = _default("acl.default")  # when no line matches
    deny_action: DenyAction = _default("acl.deny_action")
    read_mode: AclReadMode = _default("acl.read_mode")  # judge SUBSCRIBEs, or deliveries


@attrs.frozen
class AuthSettings:
    """The authorization hook asked at CONNECT (auth_http_*), per listener."""

    url: str | None = _default("auth.url")
    timeout: float = _default("auth.timeout")
    cache_ttl: float = _default("auth.cache_ttl")
    failure_policy: FailurePolicy = _default("auth.failure_policy")
    max_requests: int = _default("auth.max_requests")


@attrs.frozen
class WebSocketSettings:
    """MQTT over WebSocket: the upgrade's path, subprotocols and origins, the headers a
    trusted proxy names the device in, the largest message."""

    path: str = _default("websocket.path")
    subprotocols: tuple[str, ...] = _default("websocket.subprotocols")
    fail_if_no_subprotocol: bool = _default("websocket.fail_if_no_subprotocol")
    check_origin: bool = _default("websocket.check_origin")
    allowed_origins: tuple[str, ...] = _default("websocket.allowed_origins")
    address_header: str = _default("websocket.address_header")
    port_header: str = _default("websocket.port_header")
    trusted_proxies: tuple[str, ...] = _default("websocket.trusted_proxies")
    max_message_size: int = _default("websocket.max_message_size")


@attrs.frozen
class ListenerSettings:
    name: str
    bind: tuple[str, int]
    tls: TlsSettings
    limits: ConnectionLimits
    upstream: UpstreamSettings
    crl: CrlSettings | None
    ocsp: OcspSettings | None
    client_ocsp: ClientOcspSettings | None = None
    identity: IdentitySettings = IdentitySettings()
    acl: AclSettings = AclSettings()
    auth: AuthSettings = AuthSettings()
    front: FrontSettings = FrontSettings()
    log_connect: bool = _default("log_connect")  # also a line at accept
    transport: Transport = Transport.SSL
    websocket: WebSocketSettings = WebSocketSettings()
    tenants: tuple[TenantSettings, ...] = ()

    @property
    def key_prefix(self) -> str:
        """``listener.<transport>.<name>``: how the configuration names this listener."""
        return f"listener.{self.transport.value}.{self.name}"

    @property
    def websocket_enabled(self) -> bool:
        """Whether devices may speak MQTT over WebSocket here: a wss or ws listener, or an
        ssl listener whose alpn offers http/1.1."""
        return self.transport is not Transport.SSL or "http/1.1" in self.tls.alpn


# Where each listener option was set: option name -> (line, key as written), for errors
# found after parsing (certificate files, the OCSP issuer).
Origins = Mapping[str, Mapping[str, tuple[int, str]]]


@attrs.frozen
class Config:
    path: str
    globals: GlobalSettings
    listeners: tuple[ListenerSettings, ...]
    origins: Origins = attrs.field(factory=dict, eq=False, repr=False)
    global_lines: Mapping[str, int] = attrs.field(factory=dict, eq=False, repr=False)

    def listener(self, name: str) -> ListenerSettings:
        for listener in self.listeners:
            if listener.name == name:
                return listener
        raise KeyError(name)

    def global_error(self, key: str, reason: str) -> ConfigError:
        """A ConfigError at the line that set the global ``key`` (or naming it)."""
        return ConfigError(self.path, self.global_lines.get(key), key, reason)

    def error(self, listener: str, option: str, reason: str) -> ConfigError:
        """A ConfigError at the line that set ``option`` of ``listener`` (or naming the key);
        option "" is the listener's declaration."""
        where = self.origins.get(listener, {}).get(option)
        if where is None:
            try:
                prefix = self.listener(listener).key_prefix
            except KeyError:
                prefix = f"listener.ssl.{listener}"
            key = prefix + (f".{option}" if option else "")
            return ConfigError(self.path, None, key, reason)
        return ConfigError(self.path, where[0], where[1], reason)
