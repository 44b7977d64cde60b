"""The packets the gateway writes, and the one reply it reads (sans-IO): CONNECT (the
broker health check, the test helpers), the refusing CONNACK, and the broker's CONNACK.

One encoder for the remaining length and for MQTT strings: the CONNECT rewriter, the health
check and the test helpers all use these, so no length is ever written as a single byte.
"""

from __future__ import annotations

import attrs

from gateway.mqtt.errors import RemoteProtocolError

# Protocol levels, as they appear in the CONNECT variable header.
MQTT_3_1 = 3
MQTT_3_1_1 = 4
MQTT_5 = 5

PROTOCOL_NAMES = {MQTT_3_1: b"MQIsdp", MQTT_3_1_1: b"MQTT", MQTT_5: b"MQTT"}

MAX_FIELD = 65535  # a UTF-8 string field of MQTT holds at most this many bytes
MAX_REMAINING = 268_435_455  # four length bytes of seven bits
# The longest client id a CONNECT of protocol level 4 can carry: a string field's limit.
MAX_CLIENT_ID = MAX_FIELD

_CONNECT, _CONNACK, _DISCONNECT = 0x10, 0x20, 0xE0
DISCONNECT = bytes((_DISCONNECT, 0))


def encode_length(n: int) -> bytes:
    """MQTT's variable-length remaining length (one to four bytes)."""
    if not 0 <= n <= MAX_REMAINING:
        raise ValueError(f"a remaining length of {n} does not fit MQTT's four bytes")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode_string(value: str, what: str) -> bytes:
    """An MQTT UTF-8 string field (two length bytes, then the text)."""
    raw = value.encode("utf-8")
    if len(raw) > MAX_FIELD:
        raise ValueError(f"{what} of {len(raw)} bytes does not fit an MQTT string")
    if "\x00" in value:
        raise ValueError(f"{what} contains U+0000")
    return len(raw).to_bytes(2, "big") + raw


def packet(first: int, body: bytes) -> bytes:
    """A whole packet: the type byte, the remaining length, the body."""
    return bytes((first,)) + encode_length(len(body)) + body


def connect_packet(
    client_id: str,
    level: int = MQTT_3_1_1,
    keep_alive: int = 60,
    clean: bool = True,
) -> bytes:
    """A CONNECT with a client id and nothing else (no will, user name or password)."""
    name = PROTOCOL_NAMES[level]
    body = (
        len(name).to_bytes(2, "big")
        + name
        + bytes((level, 0x02 if clean else 0x00))
        + keep_alive.to_bytes(2, "big")
    )
    if level == MQTT_5:
        body += b"\x00"  # no properties
    body += encode_string(client_id, "client id")
    return packet(_CONNECT, body)


# CONNACK codes, MQTT 3.1/3.1.1 return code and MQTT 5 reason code.
SERVER_UNAVAILABLE = (3, 0x88)
NOT_AUTHORIZED = (5, 0x87)


def connack(protocol_level: int, code: tuple[int, int]) -> bytes:
    """A refusing CONNACK in the dialect of the client's CONNECT."""
    legacy, v5 = code
    if protocol_level == MQTT_5:
        return bytes((_CONNACK, 3, 0, v5, 0))  # session present 0, reason, no properties
    return bytes((_CONNACK, 2, 0, legacy))


@attrs.frozen
class Connack:
    session_present: bool
    code: int  # return code (3.1.1) or reason code (5.0); 0 accepts

    @property
    def accepted(self) -> bool:
        return self.code == 0


def read_connack(data: bytes, max_size: int = 4096) -> Connack | None:
    """The broker's CONNACK at the start of ``data``; None while it is incomplete.
    RemoteProtocolError if the first packet is not a CONNACK or is malformed or too large."""
    if not data:
        return None
    if data[0] != _CONNACK:
        raise RemoteProtocolError("not_connack", f"first packet is not CONNACK (0x{data[0]:02x})")
    length, shift, pos = 0, 0, 1
    while True:
        if pos >= len(data):
            return None
        byte = data[pos]
        length |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            break
        shift += 7
        if pos > 4:
            raise RemoteProtocolError("malformed", "CONNACK remaining length over four bytes")
    if length < 2 or length > max_size:
        raise RemoteProtocolError("malformed", f"CONNACK of {length} bytes")
    if len(data) < pos + 2:
        return None
    return Connack(bool(data[pos] & 0x01), data[pos + 1])
