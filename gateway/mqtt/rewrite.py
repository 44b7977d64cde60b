"""Rewriting the user name and client id of a CONNECT (sans-IO).

With ``peer_cert_as_username`` / ``peer_cert_as_clientid`` the gateway replaces what the
device claims with what its verified certificate says, so that the broker's per-user ACLs
apply per device and a device cannot pass for another. Only the first packet is touched:
every other field (protocol name and level, flags apart from the user name flag, keep
alive, MQTT 5 properties, will properties, will topic and payload, password) is kept byte
for byte, and the remaining length is recomputed.
"""

from __future__ import annotations

from gateway.mqtt.errors import RemoteProtocolError
from gateway.mqtt.packets import MQTT_5, Cursor, body_start, encode_string
from gateway.mqtt.packets import packet as whole_packet


def rewrite_connect(
    packet: bytes, username: str | None = None, client_id: str | None = None
) -> bytes:
    """``packet`` (one complete, valid CONNECT) with its user name and/or client id
    replaced (None: kept). RemoteProtocolError if the packet is not a valid CONNECT;
    ValueError if a new value cannot be encoded."""
    if username is None and client_id is None:
        return packet
    cur = Cursor(packet, body_start(packet))
    start = cur.pos
    cur.binary("protocol name")
    level = cur.u8("protocol level")
    flags_at = cur.pos
    flags = cur.u8("connect flags")
    cur.u16("keep alive")
    if level == MQTT_5:
        cur.properties("properties")
    variable_header = bytearray(packet[start : cur.pos])
    old_client_id = cur.binary("client identifier")
    will_start = cur.pos
    if flags & 0x04:
        if level == MQTT_5:
            cur.properties("will properties")
        cur.binary("will topic")
        cur.binary("will payload")
    will = packet[will_start : cur.pos]
    old_username = cur.binary("user name") if flags & 0x80 else None
    password_start = cur.pos
    if flags & 0x40:
        cur.binary("password")
    password = packet[password_start : cur.pos]
    if cur.pos != len(packet):
        raise RemoteProtocolError("malformed", "unexpected bytes at the end of CONNECT")
    if username is not None:
        flags |= 0x80
    variable_header[flags_at - start] = flags
    body = bytes(variable_header)
    body += (
        encode_string(client_id, "client id")
        if client_id is not None
        else len(old_client_id).to_bytes(2, "big") + old_client_id
    )
    body += will
    if username is not None:
        body += encode_string(username, "user name")
    elif old_username is not None:
        body += len(old_username).to_bytes(2, "big") + old_username
    body += password
    return whole_packet(packet[0], body)
