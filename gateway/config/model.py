"""The configuration as frozen, typed settings: global settings apart, and per listener one
record per concern. Each service takes the record it uses; mypy checks every field."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from gateway.errors import ConfigError


@attrs.frozen
class GlobalSettings:
    """Settings of the whole gateway (top-level keys only)."""

    crl_refresh_interval: float = 900.0
    crl_cache_dir: str | None = None
    ocsp_cache_dir: str | None = None
    stats_log_interval: float = 300.0
    shutdown_drain: float = 5.0
    reload_drain: float = 60.0
    admin_listen: tuple[str, int] | None = None
    admin_token_file: str | None = None
    admin_open_read: bool = False
    workers: int = 1  # 0: auto (one per usable CPU)
    worker_affinity: str = "auto"  # auto | address | kernel


@attrs.frozen
class TlsSettings:
    """What the listener's TLS context is built from (the files are read into TlsMaterial)."""

    certfile: str
    keyfile: str
    cacertfile: str | None
    verify_peer: bool
    fail_if_no_peer_cert: bool
    depth: int
    profile: str
    versions: tuple[str, ...]
    ciphers: tuple[str, ...]  # effective: the profile's where not set
    groups: tuple[str, ...]
    honor_cipher_order: bool


@attrs.frozen
class ConnectionLimits:
    """Per-connection time and size limits, and the listener's connection cap."""

    handshake_timeout: float
    connect_timeout: float
    max_packet_size: int
    max_connections: int
    max_connections_per_ip: int = 0  # 0: no limit
    max_conn_rate: int = 0  # new connections per second; 0: no limit
    max_conn_rate_per_ip: int = 0


@attrs.frozen
class UpstreamTls:
    """TLS to the broker: its CA, the name its certificate must carry, and optionally the
    gateway's own client certificate."""

    cacertfile: str
    server_name: str | None  # None: the broker's host as written in upstream
    certfile: str | None = None
    keyfile: str | None = None
    session_reuse: bool = True


@attrs.frozen
class UpstreamSettings:
    """The broker(s) behind the listener: the pool, its balancing and health, the
    transport (TCP or TLS) and the PROXY header sent first."""

    addresses: tuple[tuple[str, int], ...]
    connect_timeout: float
    balance: str = "least_conn"
    down_time: float = 10.0
    check_interval: float = 5.0  # 0: no active check
    check: str = "tcp"  # tcp | mqtt
    check_client_id: str = "mqttgw-health-check"
    tls: UpstreamTls | None = None
    proxy_protocol: str | None = None  # None | v1 | v2

    @property
    def address(self) -> tuple[str, int]:
        """The first broker (a pool of one is today's single upstream)."""
        return self.addresses[0]


@attrs.frozen
class IdentitySettings:
    """What of the verified client certificate replaces the CONNECT's user name and client
    id (EMQX's peer_cert_as_username / peer_cert_as_clientid): cn, dn, crt, pem, md5."""

    username: str | None = None
    client_id: str | None = None


@attrs.frozen
class FrontSettings:
    """What comes before TLS on the listener: a PROXY header from a load balancer."""

    proxy_protocol: bool = False
    proxy_protocol_timeout: float = 3.0


@attrs.frozen
class CrlSettings:
    """CRL checking of client certificates (present only when enabled)."""

    urls: tuple[str, ...]
    http_timeout: float
    max_size: int
    expired_policy: str  # reject | accept
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
    request_method: str  # post | get
    nonce: bool


@attrs.frozen
class ListenerSettings:
    name: str
    bind: tuple[str, int]
    tls: TlsSettings
    limits: ConnectionLimits
    upstream: UpstreamSettings
    crl: CrlSettings | None
    ocsp: OcspSettings | None
    identity: IdentitySettings = IdentitySettings()
    front: FrontSettings = FrontSettings()


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
            key = f"listener.ssl.{listener}" + (f".{option}" if option else "")
            return ConfigError(self.path, None, key, reason)
        return ConfigError(self.path, where[0], where[1], reason)
