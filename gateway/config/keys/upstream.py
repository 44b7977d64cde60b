"""Keys of the broker(s) behind a listener: pool, balance, health checks, TLS, PROXY header."""

from __future__ import annotations

from gateway.choices import Balance, HealthCheck, ProxyVersion
from gateway.config.keys.key import Key
from gateway.config.values import (
    choice,
    format_bool,
    format_duration,
    format_host_port_list,
    format_optional,
    parse_bool,
    parse_duration,
    parse_duration_or_zero,
    parse_host_port_list,
    parse_mqtt_client_id,
    parse_path,
)

UPSTREAM_KEYS: tuple[Key, ...] = (
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
        choice(Balance),
        Balance.LEAST_CONN,
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
        choice(HealthCheck),
        HealthCheck.TCP,
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
        path=True,
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
        path=True,
    ),
    Key(
        "upstream_keyfile",
        "upstream.tls.keyfile",
        parse_path,
        None,
        "PEM private key of upstream_certfile.",
        format=format_optional,
        global_=True,
        path=True,
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
        choice(ProxyVersion),
        None,
        "Send a PROXY protocol header to the broker first, with the device's address; v2 "
        "also carries TLS facts (version, cipher, verify result, client certificate CN). "
        "Unset: none.",
        format=format_optional,
        global_=True,
    ),
)


UPSTREAM_CONNECT_KEYS: tuple[Key, ...] = (
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
)
