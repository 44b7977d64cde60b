"""Keys of MQTT over WebSocket (``listener.wss.<name>``, and ``listener.ssl.<name>`` with
``alpn`` offering http/1.1): EMQX 4's names where it has them."""

from __future__ import annotations

from gateway.config.keys.key import Key
from gateway.config.values import (
    format_bool,
    format_list,
    format_optional,
    format_size,
    parse_bool,
    parse_http_path,
    parse_list,
    parse_networks,
    parse_protocol_names,
    parse_size,
    parse_token,
)

WEBSOCKET_KEYS: tuple[Key, ...] = (
    Key(
        "alpn",
        "tls.alpn",
        parse_protocol_names,
        (),
        "ALPN protocols offered, in order of preference (mqtt, x-amzn-mqtt-ca, http/1.1): "
        "the name a client negotiates decides MQTT or MQTT over WebSocket (http/1.1); a "
        "client that offers none is sorted by its first bytes (a CONNECT, or an HTTP "
        "request line) when http/1.1 is listed, else is MQTT. A client offering only other "
        "names is refused (no_application_protocol). Unset: no ALPN (MQTT, as before; a "
        "wss listener: WebSocket).",
        format=format_list,
    ),
    Key(
        "mqtt_path",
        "websocket.path",
        parse_http_path,
        "/mqtt",
        "The path of the WebSocket upgrade (EMQX's key); any other path gets 404.",
    ),
    Key(
        "supported_subprotocols",
        "websocket.subprotocols",
        parse_list,
        ("mqtt", "mqttv3.1", "mqtt-v3", "mqtt-v3.1.1", "mqtt-v5"),
        "WebSocket subprotocols accepted, in order of preference (EMQX's names); the first "
        "the client offers is chosen.",
        format=format_list,
    ),
    Key(
        "fail_if_no_subprotocol",
        "websocket.fail_if_no_subprotocol",
        parse_bool,
        True,
        "Refuse an upgrade that offers none of supported_subprotocols (400); false accepts "
        "it with none chosen (some old MQTT clients send none).",
        format=format_bool,
    ),
    Key(
        "check_origin_enable",
        "websocket.check_origin",
        parse_bool,
        False,
        "Refuse an upgrade whose Origin header is not in allowed_origins (403); a request "
        "without Origin (not a browser) passes.",
        format=format_bool,
    ),
    Key(
        "allowed_origins",
        "websocket.allowed_origins",
        parse_list,
        (),
        "With check_origin_enable: the Origin values accepted (scheme://host[:port]).",
        format=format_list,
    ),
    Key(
        "proxy_address_header",
        "websocket.address_header",
        parse_token,
        "x-forwarded-for",
        "The header a TLS-terminating proxy names the device's address in (EMQX's key); "
        "honoured only from trusted_proxies.",
        format=format_optional,
    ),
    Key(
        "proxy_port_header",
        "websocket.port_header",
        parse_token,
        "x-forwarded-port",
        "The header a TLS-terminating proxy names the device's port in (EMQX's key); "
        "honoured only from trusted_proxies.",
        format=format_optional,
    ),
    Key(
        "trusted_proxies",
        "websocket.trusted_proxies",
        parse_networks,
        (),
        "Addresses or networks (CIDR) whose proxy_address_header / proxy_port_header are "
        "believed; from any other peer they are ignored. Unset: never believed.",
        format=format_list,
    ),
    Key(
        "max_frame_size",
        "websocket.max_message_size",
        parse_size,
        1024 * 1024,
        "The largest WebSocket message (its frames together) accepted; a larger one closes "
        "the connection with 1009 (message too big) once that many bytes have come.",
        format=format_size,
    ),
)
