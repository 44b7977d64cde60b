"""The key table: every configuration key, where it may appear, how it parses, its default,
where it lands in the settings model, and its meaning. One table drives parsing,
``check-config``'s output, and the tests that hold docs/configuration.md and the sample
configuration to it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from gateway.config.profiles import GROUPS, PROFILES, TLS12_SUITES, TLS13_SUITES
from gateway.config.values import (
    enum_of,
    format_bool,
    format_duration,
    format_host_port_list,
    format_list,
    format_optional,
    format_optional_bind,
    format_size,
    format_workers,
    parse_admin_bind,
    parse_bool,
    parse_duration,
    parse_duration_or_zero,
    parse_host_port_list,
    parse_limit,
    parse_list,
    parse_mqtt_client_id,
    parse_path,
    parse_positive_int,
    parse_size,
    parse_tls_versions,
    parse_urls,
    parse_urls_one,
    parse_workers,
)

LISTENER_PREFIX = "listener.ssl."
IDENTITY_SOURCES = ("cn", "dn", "crt", "pem", "md5")


@attrs.frozen
class Key:
    """One configuration key.

    ``attr`` is the dotted path of its value in the model: from ``ListenerSettings`` for a
    listener key (``tls.certfile``; a first part ``crl`` or ``ocsp`` names a section that
    exists only when enabled), from ``GlobalSettings`` for a global-only key.
    """

    name: str
    attr: str
    parse: Callable[[str], Any]
    default: Any
    doc: str
    format: Callable[[Any], str] = str
    listener: bool = True  # listener.ssl.<name>.<key>
    global_: bool = False  # <key> at the top level
    required: bool = False
    aliases: tuple[str, ...] = ()  # other accepted names (EMQX 4.4's code uses some)
    presence: bool = False  # a boolean key whose value is whether ``attr`` is set

    @property
    def section(self) -> str | None:
        """``crl`` or ``ocsp`` for the keys of an optional section, else None."""
        head, dot, _ = self.attr.partition(".")
        return head if dot and head in ("crl", "ocsp") else None

    @property
    def enables(self) -> str | None:
        """The section this key switches on (``enable_crl_cache`` -> ``crl``)."""
        return self.attr if self.attr in ("crl", "ocsp") else None

    def value_of(self, settings: Any) -> Any:
        """This key's effective value, read from a ListenerSettings or GlobalSettings."""
        if self.enables is not None:
            return getattr(settings, self.attr) is not None
        value = settings
        for part in self.attr.split("."):
            if value is None:
                return self.default  # inside an optional record that is off
            value = getattr(value, part)
        if self.presence:
            return value is not None
        return value


def _parse_verify(text: str) -> bool:
    return enum_of("verify_peer", "verify_none")(text) == "verify_peer"


def _format_verify(verify_peer: bool) -> str:
    return "verify_peer" if verify_peer else "verify_none"


def _format_tristate(value: bool | None) -> str:
    return "" if value is None else format_bool(value)


KEYS: tuple[Key, ...] = (
    Key(
        "keyfile",
        "tls.keyfile",
        parse_path,
        None,
        "PEM private key of the server certificate.",
        required=True,
    ),
    Key(
        "certfile",
        "tls.certfile",
        parse_path,
        None,
        "PEM server certificate followed by its intermediate chain.",
        required=True,
    ),
    Key(
        "cacertfile",
        "tls.cacertfile",
        parse_path,
        None,
        "PEM CA certificates (roots and intermediates) that client certificates must chain "
        "to. Required with verify = verify_peer.",
    ),
    Key(
        "verify",
        "tls.verify_peer",
        _parse_verify,
        True,
        "verify_peer asks for and verifies a client certificate; verify_none asks for none.",
        format=_format_verify,
    ),
    Key(
        "fail_if_no_peer_cert",
        "tls.fail_if_no_peer_cert",
        parse_bool,
        None,
        "Refuse clients that present no certificate. Default: true with verify_peer, false "
        "with verify_none (setting it true with verify_none is an error).",
        format=_format_tristate,
    ),
    Key(
        "depth",
        "tls.depth",
        parse_positive_int,
        10,
        "Maximum number of intermediate certificates allowed between a client certificate "
        "and a trusted CA.",
    ),
    Key(
        "tls_profile",
        "tls.profile",
        enum_of(*PROFILES),
        "intermediate",
        "Mozilla's server-side TLS profile that sets tls_versions, ciphers, ecdh_curves and "
        "honor_cipher_order together: intermediate (TLS 1.3 and 1.2; TLS 1.2 only with ECDHE "
        "and AES-GCM or ChaCha20-Poly1305) or modern (TLS 1.3 only). Each of those four keys, "
        "when set, wins over the profile.",
        global_=True,
    ),
    Key(
        "tls_versions",
        "tls.versions",
        parse_tls_versions,
        None,
        "TLS versions accepted: tlsv1.3 and/or tlsv1.2 (nothing older is accepted). Unset: "
        "the profile's (intermediate: tlsv1.3, tlsv1.2; modern: tlsv1.3).",
        format=format_list,
    ),
    Key(
        "ciphers",
        "tls.ciphers",
        parse_list,
        None,
        "Cipher suites, comma-separated, in OpenSSL names. Names starting with TLS_ are TLS 1.3 "
        "suites; the others are TLS 1.2 ciphers. Each half replaces the profile's; a half not "
        "named stays the profile's. Unset: the profile's (TLS 1.3: "
        + ", ".join(TLS13_SUITES)
        + "; TLS 1.2: "
        + ", ".join(TLS12_SUITES)
        + ").",
        format=format_list,
    ),
    Key(
        "ecdh_curves",
        "tls.groups",
        parse_list,
        None,
        "Key-exchange groups (elliptic curves) for ECDHE, in preference order, OpenSSL names "
        "(X25519, P-256, P-384, X448, P-521; X25519MLKEM768 where OpenSSL has it). Unset: the "
        "profile's (" + ", ".join(GROUPS) + "). HAProxy's name, curves, is accepted too.",
        format=format_list,
        aliases=("curves",),
    ),
    Key(
        "honor_cipher_order",
        "tls.honor_cipher_order",
        parse_bool,
        None,
        "true: the server's cipher order decides; false: the client's (Mozilla's choice for "
        "both profiles: a client knows whether it has AES hardware). Unset: the profile's.",
        format=format_bool,
    ),
    Key(
        "handshake_timeout",
        "limits.handshake_timeout",
        parse_duration,
        15.0,
        "Time allowed from TCP accept to the end of the TLS handshake.",
        format=format_duration,
    ),
    Key(
        "max_connections",
        "limits.max_connections",
        parse_positive_int,
        100000,
        "Concurrent connections accepted on this listener; connections beyond are closed "
        "at once and logged.",
    ),
    Key(
        "max_connections_per_ip",
        "limits.max_connections_per_ip",
        parse_limit,
        1000,
        "Concurrent connections from one address (an IPv6 client counts by its /64); beyond, "
        "closed at once, before any TLS work (reason too_many_connections_per_ip). Raise it "
        "for fleets behind one NAT address. 0: no limit.",
        global_=True,
    ),
    Key(
        "max_conn_rate",
        "limits.max_conn_rate",
        parse_limit,
        2000,
        "New connections per second on this listener (EMQX's key; a token bucket holding one "
        "second's worth); beyond, closed at once, before any TLS work (reason rate_limited). "
        "0: no limit.",
        global_=True,
    ),
    Key(
        "max_conn_rate_per_ip",
        "limits.max_conn_rate_per_ip",
        parse_limit,
        200,
        "New connections per second from one address (a token bucket holding one second's "
        "worth); beyond, closed at once, before any TLS work (reason rate_limited_per_ip). "
        "0: no limit.",
        global_=True,
    ),
    Key(
        "upstream",
        "upstream.addresses",
        parse_host_port_list,
        None,
        "The broker(s) behind this listener: host:port, or a pool (host:port, host:port, "
        "...) balanced by upstream_balance. A listener without one uses the global upstream; "
        "having neither is an error.",
        format=format_host_port_list,
        global_=True,
    ),
    Key(
        "upstream_balance",
        "upstream.balance",
        enum_of("least_conn", "round_robin", "client_id"),
        "least_conn",
        "How a pool's broker is chosen: least_conn (fewest relayed sessions), round_robin, "
        "or client_id (consistent hashing of the MQTT client id: a device keeps reaching the "
        "broker that holds its session; adding a broker moves about 1/N of the devices).",
        global_=True,
    ),
    Key(
        "upstream_down_time",
        "upstream.down_time",
        parse_duration,
        10.0,
        "How long a broker whose connect or health check failed is left out of the pool "
        "(it is tried again sooner only if every broker is down).",
        format=format_duration,
        global_=True,
    ),
    Key(
        "upstream_check_interval",
        "upstream.check_interval",
        parse_duration_or_zero,
        5.0,
        "How often each broker of the pool is health-checked (0: no active check; failed "
        "connects still mark a broker down).",
        format=format_duration,
        global_=True,
    ),
    Key(
        "upstream_check",
        "upstream.check",
        enum_of("tcp", "mqtt"),
        "tcp",
        "tcp: a TCP (or TLS, with upstream_tls) connect; mqtt: a real CONNECT answered by a "
        "CONNACK accepting it, with upstream_check_client_id.",
        global_=True,
    ),
    Key(
        "upstream_check_client_id",
        "upstream.check_client_id",
        parse_mqtt_client_id,
        "mqttgw-health-check",
        "The client id of the MQTT health check (clean session, no will, no credentials; "
        "at most 65535 bytes of UTF-8).",
        global_=True,
    ),
    Key(
        "upstream_tls",
        "upstream.tls",
        parse_bool,
        False,
        "Speak TLS to the broker. The broker's certificate must chain to upstream_cacertfile "
        "and name upstream_server_name; on failure the device gets CONNACK 'server "
        "unavailable' and the verification error is logged.",
        format=format_bool,
        global_=True,
        presence=True,
    ),
    Key(
        "upstream_cacertfile",
        "upstream.tls.cacertfile",
        parse_path,
        None,
        "PEM CA certificate(s) the broker's certificate must chain to (required with "
        "upstream_tls).",
        format=format_optional,
        global_=True,
    ),
    Key(
        "upstream_server_name",
        "upstream.tls.server_name",
        str,
        None,
        "The name (DNS name or IP address) the broker's certificate must carry, also sent as "
        "SNI. Unset: the broker's host as written in upstream.",
        format=format_optional,
        global_=True,
    ),
    Key(
        "upstream_certfile",
        "upstream.tls.certfile",
        parse_path,
        None,
        "PEM client certificate (and chain) the gateway presents to the broker (optional).",
        format=format_optional,
        global_=True,
    ),
    Key(
        "upstream_keyfile",
        "upstream.tls.keyfile",
        parse_path,
        None,
        "PEM private key of upstream_certfile.",
        format=format_optional,
        global_=True,
    ),
    Key(
        "upstream_tls_session_reuse",
        "upstream.tls.session_reuse",
        parse_bool,
        True,
        "Offer each broker's last TLS session again (a reconnect storm then resumes instead "
        "of doing full handshakes to the broker). false: a full handshake every time.",
        format=format_bool,
        global_=True,
    ),
    Key(
        "upstream_proxy_protocol",
        "upstream.proxy_protocol",
        enum_of("v1", "v2"),
        None,
        "Send a PROXY protocol header to the broker first, with the device's address; v2 "
        "also carries TLS facts (version, cipher, verify result, client certificate CN). "
        "Unset: none.",
        format=format_optional,
        global_=True,
    ),
    Key(
        "peer_cert_as_username",
        "identity.username",
        enum_of(*IDENTITY_SOURCES),
        None,
        "Replace the CONNECT's user name with the verified client certificate's cn, dn, "
        "crt (base64 DER), pem or md5 (hex MD5 of the DER), so that the broker's per-user "
        "ACLs apply per device (EMQX's key). Unset: the device's own.",
        format=format_optional,
    ),
    Key(
        "peer_cert_as_clientid",
        "identity.client_id",
        enum_of(*IDENTITY_SOURCES),
        None,
        "Replace the CONNECT's client id the same way (EMQX's key). Unset: the device's own.",
        format=format_optional,
    ),
    Key(
        "proxy_protocol",
        "front.proxy_protocol",
        parse_bool,
        False,
        "Expect a PROXY protocol header (v1 or v2) from a load balancer before the TLS "
        "handshake: logs, limits and PROXY headers to the broker then carry the device's "
        "address. A connection without a valid header is closed and logged (EMQX's key).",
        format=format_bool,
    ),
    Key(
        "proxy_protocol_timeout",
        "front.proxy_protocol_timeout",
        parse_duration,
        3.0,
        "Time allowed for the PROXY header to arrive (EMQX's key).",
        format=format_duration,
    ),
    Key(
        "upstream_connect_timeout",
        "upstream.connect_timeout",
        parse_duration,
        5.0,
        "Time allowed to open the TCP connection to the upstream broker. On failure the "
        "client gets CONNACK 'server unavailable'.",
        format=format_duration,
        global_=True,
    ),
    Key(
        "connect_timeout",
        "limits.connect_timeout",
        parse_duration,
        10.0,
        "Time allowed after the TLS handshake for the client's complete CONNECT packet.",
        format=format_duration,
        global_=True,
    ),
    Key(
        "max_packet_size",
        "limits.max_packet_size",
        parse_size,
        65536,
        "Largest CONNECT packet accepted (the only packet the gateway reads); larger ones "
        "are refused as soon as their length is known.",
        format=format_size,
        global_=True,
    ),
)

KEYS += (
    Key(
        "enable_crl_cache",
        "crl",
        parse_bool,
        False,
        "Check client certificates against CRLs that the gateway fetches and refreshes "
        "itself (EMQX's name; enable_crl_check is accepted too).",
        format=format_bool,
        aliases=("enable_crl_check",),
    ),
    Key(
        "crl_cache_urls",
        "crl.urls",
        parse_urls,
        (),
        "Comma-separated http(s) URLs of CRLs (PEM, one or more per URL, or DER). Each is "
        "fetched at start-up and then refreshed.",
        format=format_list,
    ),
    Key(
        "crl_cache_http_timeout",
        "crl.http_timeout",
        parse_duration,
        15.0,
        "Time allowed for one CRL download, redirects and body included.",
        global_=True,
        format=format_duration,
    ),
    Key(
        "crl_cache.refresh_interval",
        "crl_refresh_interval",
        parse_duration,
        900.0,
        "Global: how often every CRL is fetched again. A CRL whose nextUpdate comes sooner "
        "is fetched at its nextUpdate; failures are retried with backoff (10s, 20s, 40s, ... "
        "up to this interval).",
        listener=False,
        global_=True,
        aliases=("crl_cache_refresh_interval",),
        format=format_duration,
    ),
    Key(
        "crl_cache.dir",
        "crl_cache_dir",
        parse_path,
        None,
        "Global: directory where each last good CRL is written (atomically) and read back at "
        "start-up, so that a restart during a CA outage keeps enforcing revocation. Unset: "
        "nothing is persisted.",
        format=format_optional,
        listener=False,
        global_=True,
    ),
    Key(
        "crl_cache_max_size",
        "crl.max_size",
        parse_size,
        128 * 1024 * 1024,
        "Largest CRL body accepted; a larger download is abandoned and the last good CRL kept.",
        format=format_size,
        global_=True,
    ),
    Key(
        "crl_expired_policy",
        "crl.expired_policy",
        enum_of("reject", "accept"),
        "reject",
        "What happens when the revocation status of a certificate of the client's chain "
        "cannot be determined (its CRLs past nextUpdate plus crl_grace_period, none ever "
        "obtained, or not covering every reason): reject (fail closed) or accept.",
    ),
    Key(
        "crl_grace_period",
        "crl.grace_period",
        parse_duration_or_zero,
        0.0,
        "How long after its nextUpdate a CRL is still used as if fresh.",
        format=format_duration,
    ),
    Key(
        "crl_cache_from_cert",
        "crl.from_cert",
        parse_bool,
        False,
        "Also fetch and refresh the CRLs named in the CRL Distribution Points of client "
        "certificates whose chain verified. A client whose CRL is not cached yet is held after "
        "its CONNECT until the CRL arrives (at most crl_cache_http_timeout + 5s), then "
        "forwarded or refused with CONNACK 'not authorized'.",
        format=format_bool,
    ),
    Key(
        "crl_cache_capacity",
        "crl.capacity",
        parse_positive_int,
        64,
        "How many distribution-point CRLs are kept; the least recently used is dropped.",
    ),
)

KEYS += (
    Key(
        "enable_ocsp_stapling",
        "ocsp",
        parse_bool,
        False,
        "Staple a cached, verified OCSP response for the server certificate to handshakes "
        "of clients that ask for one (TLS status_request).",
        format=format_bool,
    ),
    Key(
        "ocsp_responder_url",
        "ocsp.responder_url",
        parse_urls_one,
        None,
        "The OCSP responder. Unset: the OCSP URL of the certificate's Authority Information "
        "Access extension (what `openssl x509 -noout -ocsp_uri` prints).",
        format=format_optional,
    ),
    Key(
        "ocsp_issuer_pem",
        "ocsp.issuer_pem",
        parse_path,
        None,
        "PEM certificate of the server certificate's issuer. Unset: taken from certfile's "
        "chain, else from cacertfile.",
        format=format_optional,
    ),
    Key(
        "ocsp_refresh_interval",
        "ocsp.refresh_interval",
        parse_duration,
        300.0,
        "How often the OCSP response is fetched again; in any case at the latest halfway to "
        "the cached response's nextUpdate. Failures are retried at 10s, 20s, 40s, ...",
        format=format_duration,
    ),
    Key(
        "ocsp_refresh_http_timeout",
        "ocsp.http_timeout",
        parse_duration,
        15.0,
        "Time allowed for one OCSP request, redirects and body included.",
        format=format_duration,
    ),
    Key(
        "ocsp_request_method",
        "ocsp.request_method",
        enum_of("post", "get"),
        "post",
        "post: POST application/ocsp-request; get: the GET form of RFC 6960 appendix A.1 "
        "(base64 request in the URL, cacheable by HTTP proxies).",
    ),
    Key(
        "ocsp_nonce",
        "ocsp.nonce",
        parse_bool,
        False,
        "Send a nonce in each request and require the responder to echo it. Off by default: "
        "many responders answer from pre-signed caches and ignore nonces.",
        format=format_bool,
    ),
    Key(
        "ocsp_cache.dir",
        "ocsp_cache_dir",
        parse_path,
        None,
        "Global: directory where each listener's last valid OCSP response is written "
        "(atomically) and read back at start-up if still valid, so that the first handshakes "
        "after a restart are stapled even while the responder is down. Unset: not persisted.",
        format=format_optional,
        listener=False,
        global_=True,
    ),
    Key(
        "stats_log_interval",
        "stats_log_interval",
        parse_duration,
        300.0,
        "Global: every this often, one log line per listener with active, accepted and refused "
        "connections (by reason), bytes relayed, CRL counts, and the longest reactor stall "
        "in the period (measured at every turn of the event loop).",
        listener=False,
        global_=True,
        format=format_duration,
    ),
)


KEYS += (
    Key(
        "shutdown_drain",
        "shutdown_drain",
        parse_duration_or_zero,
        5.0,
        "Global: on SIGTERM the gateway stops accepting, gives open connections this long "
        "to end by themselves, then closes the rest (each relayed session logged with "
        "closed_by=shutdown) and exits 0.",
        listener=False,
        global_=True,
        format=format_duration,
    ),
)


KEYS += (
    Key(
        "reload_drain",
        "reload_drain",
        parse_duration_or_zero,
        60.0,
        "Global: when a reload removes a listener, it stops accepting at once and its open "
        "connections get this long to end before they are closed (closed_by=reload).",
        listener=False,
        global_=True,
        format=format_duration,
    ),
    Key(
        "admin.listen",
        "admin_listen",
        parse_admin_bind,
        None,
        "Global: the admin HTTP listener ([ip:]port; a bare port binds 127.0.0.1): status "
        "page, /status, /metrics, /ready, /live, POST /refresh and /reload. Unset: off. An "
        "address other than loopback requires admin.token_file.",
        format=format_optional_bind,
        listener=False,
        global_=True,
    ),
    Key(
        "admin.token_file",
        "admin_token_file",
        parse_path,
        None,
        "Global: a file holding the bearer token of the admin listener (at least 16 "
        "characters; compared in constant time). Needed for /reload and /refresh, and for any "
        "bind other than loopback.",
        format=format_optional,
        listener=False,
        global_=True,
    ),
    Key(
        "admin.open_read",
        "admin_open_read",
        parse_bool,
        False,
        "Global: with a token, leave the reading endpoints (/, /status, /metrics, /ready, "
        "/live) open to requests without it. /reload and /refresh always need the token.",
        format=format_bool,
        listener=False,
        global_=True,
    ),
)


KEYS += (
    Key(
        "workers",
        "workers",
        parse_workers,
        1,
        "Global: serving processes. 1: one process does everything. auto: one per CPU the "
        "process may use; N: N. With more than one, the process twistd starts is the master: "
        "it binds every port (before dropping privileges), fetches CRLs and OCSP once for "
        "all, and starts N workers that serve connections on sockets it hands them "
        "(SO_REUSEPORT: the kernel spreads connections). A worker that dies is restarted "
        "with backoff; the ports stay open while the master lives. Changing it needs a "
        "restart.",
        format=format_workers,
        listener=False,
        global_=True,
    ),
    Key(
        "worker_affinity",
        "worker_affinity",
        enum_of("auto", "address", "kernel"),
        "auto",
        "Global, with workers: which worker gets a connection. address: always the same one "
        "for a client address (a reconnecting device meets the worker holding its TLS "
        "session, so it resumes); kernel: the kernel's hash of address and port (spreads "
        "devices behind one NAT address too). auto: address, except on listeners with "
        "proxy_protocol (every connection comes from the load balancer): kernel.",
        listener=False,
        global_=True,
    ),
)


KEYS_BY_NAME: Mapping[str, Key] = {k.name: k for k in KEYS}
ALIASES: Mapping[str, str] = {a: k.name for k in KEYS for a in k.aliases}
LISTENER_KEYS = tuple(k.name for k in KEYS if k.listener)
GLOBAL_KEYS = tuple(k.name for k in KEYS if k.global_)
LISTENER_ALIASES = {a: k for a, k in ALIASES.items() if KEYS_BY_NAME[k].listener}
GLOBAL_ALIASES = {a: k for a, k in ALIASES.items() if KEYS_BY_NAME[k].global_}
