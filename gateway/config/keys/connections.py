"""Keys of per-connection limits, the PROXY header in front, the identity the certificate
gives."""

from __future__ import annotations

from gateway.choices import AclDefault, AclReadMode, DenyAction, IdentitySource, RateAction
from gateway.config.keys.key import Key
from gateway.config.values import (
    choice,
    format_bool,
    format_duration,
    format_optional,
    format_rate,
    format_size,
    parse_bool,
    parse_byte_rate,
    parse_duration,
    parse_limit,
    parse_message_rate,
    parse_path,
    parse_positive_int,
    parse_size,
)

LIMIT_KEYS: tuple[Key, ...] = (
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
        "messages_rate",
        "limits.messages_rate",
        parse_message_rate,
        None,
        "PUBLISH packets per device (EMQX 5's name): 100/s, 10000/60m; none: no limit. Over "
        "it the gateway holds the device's next PUBLISH and stops reading from it (TCP "
        "backpressure, as EMQX does) until its tokens return: nothing is dropped, no other "
        "device slows.",
        format=format_rate,
        global_=True,
    ),
    Key(
        "messages_burst",
        "limits.messages_burst",
        parse_positive_int,
        1,
        "PUBLISH packets a device may send at once above messages_rate (the bucket's size).",
        global_=True,
    ),
    Key(
        "bytes_rate",
        "limits.bytes_rate",
        parse_byte_rate,
        None,
        "PUBLISH bytes per device (EMQX 5's name): 1MB/s, 512KB/10s; none: no limit. Paced "
        "as messages_rate.",
        format=format_rate,
        global_=True,
    ),
    Key(
        "rate_limit_action",
        "limits.rate_limit_action",
        choice(RateAction),
        RateAction.PAUSE,
        "A device over messages_rate or bytes_rate: pause (hold its PUBLISH and stop "
        "reading from it until its tokens return) or disconnect (end the session: MQTT 5 "
        "DISCONNECT 0x96 message rate too high; reason message_rate).",
        global_=True,
    ),
    Key(
        "bytes_burst",
        "limits.bytes_burst",
        parse_positive_int,
        65536,
        "PUBLISH bytes a device may send at once above bytes_rate (the bucket's size).",
        global_=True,
    ),
)


ACL_KEYS: tuple[Key, ...] = (
    Key(
        "acl_file",
        "acl.file",
        parse_path,
        None,
        "Topic rules in Mosquitto's ACL file syntax (topic, user, pattern with %u and %c; "
        "read, write, readwrite, deny), checked by the gateway for every PUBLISH and "
        "SUBSCRIBE of the device, for any broker. The user name is the certificate's "
        "identity (peer_cert_as_username's value, else its CN), %c the client id. Reloaded "
        "with the configuration: live sessions use the new rules for their next packet. "
        "Unset: no rules (the relay forwards bytes unread).",
        format=format_optional,
        global_=True,
        path=True,
    ),
    Key(
        "acl_default",
        "acl.default",
        choice(AclDefault),
        AclDefault.DENY,
        "With acl_file: what a PUBLISH or SUBSCRIBE that no line matches gets.",
        global_=True,
    ),
    Key(
        "acl_deny_action",
        "acl.deny_action",
        choice(DenyAction),
        DenyAction.IGNORE,
        "With acl_file: ignore drops a denied PUBLISH (MQTT 5 QoS 1/2: PUBACK/PUBREC 0x87 "
        "not authorized; 3.1.1: acknowledged, as Mosquitto does) and refuses a denied "
        "SUBSCRIBE filter in the SUBACK (0x80 / 0x87) while the others pass; disconnect "
        "ends the session (MQTT 5: DISCONNECT 0x87 first).",
        global_=True,
    ),
    Key(
        "acl_read_mode",
        "acl.read_mode",
        choice(AclReadMode),
        AclReadMode.FILTER,
        "With acl_file: filter refuses a SUBSCRIBE filter that could receive a topic a deny "
        "line names; delivery grants a filter the read rules cover whatever the deny lines "
        "say and drops each PUBLISH the broker delivers that the rules deny (QoS 1/2 "
        "acknowledged to the broker on the device's behalf), as Mosquitto does.",
        global_=True,
    ),
)


IDENTITY_KEYS: tuple[Key, ...] = (
    Key(
        "peer_cert_as_username",
        "identity.username",
        choice(IdentitySource),
        None,
        "Replace the CONNECT's user name with the verified client certificate's cn, dn, "
        "crt (base64 DER), pem or md5 (hex MD5 of the DER), so that the broker's per-user "
        "ACLs apply per device (EMQX's key). Unset: the device's own.",
        format=format_optional,
    ),
    Key(
        "peer_cert_as_clientid",
        "identity.client_id",
        choice(IdentitySource),
        None,
        "Replace the CONNECT's client id the same way (EMQX's key). Unset: the device's own.",
        format=format_optional,
    ),
    Key(
        "deny_file",
        "identity.deny_file",
        parse_path,
        None,
        "Device certificates refused whatever their CA and revocation status say, one a "
        "line: 'sha256 HEX' (the certificate's SHA-256 fingerprint), 'serial HEX' (any "
        "issuer) or 'serial HEX ISSUER' (RFC 4514). Checked at every handshake, resumed ones "
        "too (reason deny_listed); re-read on each reload (SIGHUP, /reload, watch_files), "
        "which then closes the live sessions it names (MQTT 5: DISCONNECT 0x87 first). "
        "Unset: no list.",
        format=format_optional,
        global_=True,
        path=True,
    ),
)


FRONT_KEYS: tuple[Key, ...] = (
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
)


CONNECT_KEYS: tuple[Key, ...] = (
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
