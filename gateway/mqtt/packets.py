"""MQTT's wire format, once (sans-IO): the variable byte integer (the remaining length and
every MQTT 5 length), the fields, MQTT 5 properties, every packet the gateway writes
(CONNECT, CONNACK, SUBSCRIBE, SUBACK, PUBACK, PUBREC, DISCONNECT with properties) and the
one reply it reads (the broker's CONNACK).

The CONNECT reader (``codec``), the stream reader (``stream``), the CONNECT rewriter, the
policy edge, the health check and the test helpers all read and write through these, so
the parser an attacker talks to is written in one place: a length is decoded by
``decode_varint`` alone, and is never written as a single byte.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

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


class Kind(enum.IntEnum):
    """Packet types (the fixed header's high four bits)."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


DISCONNECT = bytes((Kind.DISCONNECT << 4, 0))  # MQTT 3.1.1's (and a plain MQTT 5 one)

# -- reading -------------------------------------------------------------------------------


def decode_varint(
    buf: bytes | bytearray | memoryview, pos: int, end: int, what: str = "remaining length"
) -> tuple[int, int] | None:
    """The variable byte integer at ``buf[pos:end]``: (its value, the position after it),
    or None when it goes on past ``end``. RemoteProtocolError when it is longer than four
    bytes. The gateway's only decoder of MQTT lengths."""
    value = 0
    shift = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift == 28:
            raise RemoteProtocolError("malformed", f"{what} is longer than four bytes")
    return None


def fixed_header(buf: bytes | bytearray | memoryview, pos: int, end: int) -> tuple[int, int] | None:
    """(where the body starts, its length) of the packet at ``buf[pos]``; None while the
    fixed header is not all in ``buf[:end]``."""
    decoded = decode_varint(buf, pos + 1, end)
    return None if decoded is None else (decoded[1], decoded[0])


def body_start(raw: bytes | memoryview) -> int:
    """Where the body of the complete packet ``raw`` starts."""
    header = fixed_header(raw, 0, len(raw))
    if header is None:
        raise RemoteProtocolError("malformed", "fixed header truncated")
    return header[0]


def read_u16(raw: bytes | memoryview, pos: int, what: str) -> tuple[int, int]:
    """A two-byte integer of a complete packet: (value, position after it)."""
    if pos + 2 > len(raw):
        raise RemoteProtocolError("malformed", f"{what} truncated")
    return raw[pos] << 8 | raw[pos + 1], pos + 2


def read_binary(raw: bytes | memoryview, pos: int, what: str) -> tuple[bytes, int]:
    """Binary data (two length bytes, then the bytes) of a complete packet."""
    size, pos = read_u16(raw, pos, what)
    if pos + size > len(raw):
        raise RemoteProtocolError("malformed", f"{what} truncated")
    return bytes(raw[pos : pos + size]), pos + size


def read_utf8(raw: bytes | memoryview, pos: int, what: str) -> tuple[str, int]:
    """A UTF-8 string of a complete packet: valid UTF-8 without U+0000."""
    data, pos = read_binary(raw, pos, what)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError("malformed", f"{what} is not valid UTF-8") from None
    if "\x00" in text:
        raise RemoteProtocolError("malformed", f"{what} contains U+0000")
    return text, pos


def read_properties_length(raw: bytes | memoryview, pos: int, what: str) -> tuple[int, int]:
    """(the properties' length, where they start) at ``pos`` of a complete packet."""
    decoded = decode_varint(raw, pos, len(raw), what)
    if decoded is None:
        raise RemoteProtocolError("malformed", f"{what} truncated")
    length, start = decoded
    if start + length > len(raw):
        raise RemoteProtocolError("malformed", f"{what} truncated")
    return length, start


def skip_properties(raw: bytes | memoryview, pos: int, what: str) -> int:
    """The position after the MQTT 5 properties at ``pos`` (validated for length only)."""
    length, start = read_properties_length(raw, pos, what)
    return start + length


class Cursor:
    """Bounds-checked reads over one complete packet, front to back."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise RemoteProtocolError("malformed", f"CONNECT truncated in {what}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big")

    def binary(self, what: str) -> bytes:
        return self.take(self.u16(what), what)

    def utf8(self, what: str) -> str:
        text, self.pos = read_utf8(self.data, self.pos, what)
        return text

    def properties(self, what: str) -> None:
        # MQTT 5 properties: validated for length only; the broker interprets them.
        self.pos = skip_properties(self.data, self.pos, what)


# -- MQTT 5 properties ---------------------------------------------------------------------


class Value(enum.Enum):
    """How a property's value is written."""

    BYTE = 1
    TWO = 2
    FOUR = 4
    VARINT = 0
    UTF8 = "utf8"
    BINARY = "binary"
    PAIR = "pair"


class Property(enum.IntEnum):
    """MQTT 5 property identifiers (MQTT 5.0, 2.2.2.2); ``TYPES`` gives each one's form."""

    PAYLOAD_FORMAT_INDICATOR = 0x01
    MESSAGE_EXPIRY_INTERVAL = 0x02
    CONTENT_TYPE = 0x03
    RESPONSE_TOPIC = 0x08
    CORRELATION_DATA = 0x09
    SUBSCRIPTION_IDENTIFIER = 0x0B
    SESSION_EXPIRY_INTERVAL = 0x11
    ASSIGNED_CLIENT_IDENTIFIER = 0x12
    SERVER_KEEP_ALIVE = 0x13
    AUTHENTICATION_METHOD = 0x15
    AUTHENTICATION_DATA = 0x16
    REQUEST_PROBLEM_INFORMATION = 0x17
    WILL_DELAY_INTERVAL = 0x18
    REQUEST_RESPONSE_INFORMATION = 0x19
    RESPONSE_INFORMATION = 0x1A
    SERVER_REFERENCE = 0x1C
    REASON_STRING = 0x1F
    RECEIVE_MAXIMUM = 0x21
    TOPIC_ALIAS_MAXIMUM = 0x22
    TOPIC_ALIAS = 0x23
    MAXIMUM_QOS = 0x24
    RETAIN_AVAILABLE = 0x25
    USER_PROPERTY = 0x26
    MAXIMUM_PACKET_SIZE = 0x27
    WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
    SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
    SHARED_SUBSCRIPTION_AVAILABLE = 0x2A


_P, _V = Property, Value
TYPES: dict[Property, Value] = {
    _P.PAYLOAD_FORMAT_INDICATOR: _V.BYTE,
    _P.MESSAGE_EXPIRY_INTERVAL: _V.FOUR,
    _P.CONTENT_TYPE: _V.UTF8,
    _P.RESPONSE_TOPIC: _V.UTF8,
    _P.CORRELATION_DATA: _V.BINARY,
    _P.SUBSCRIPTION_IDENTIFIER: _V.VARINT,
    _P.SESSION_EXPIRY_INTERVAL: _V.FOUR,
    _P.ASSIGNED_CLIENT_IDENTIFIER: _V.UTF8,
    _P.SERVER_KEEP_ALIVE: _V.TWO,
    _P.AUTHENTICATION_METHOD: _V.UTF8,
    _P.AUTHENTICATION_DATA: _V.BINARY,
    _P.REQUEST_PROBLEM_INFORMATION: _V.BYTE,
    _P.WILL_DELAY_INTERVAL: _V.FOUR,
    _P.REQUEST_RESPONSE_INFORMATION: _V.BYTE,
    _P.RESPONSE_INFORMATION: _V.UTF8,
    _P.SERVER_REFERENCE: _V.UTF8,
    _P.REASON_STRING: _V.UTF8,
    _P.RECEIVE_MAXIMUM: _V.TWO,
    _P.TOPIC_ALIAS_MAXIMUM: _V.TWO,
    _P.TOPIC_ALIAS: _V.TWO,
    _P.MAXIMUM_QOS: _V.BYTE,
    _P.RETAIN_AVAILABLE: _V.BYTE,
    _P.USER_PROPERTY: _V.PAIR,
    _P.MAXIMUM_PACKET_SIZE: _V.FOUR,
    _P.WILDCARD_SUBSCRIPTION_AVAILABLE: _V.BYTE,
    _P.SUBSCRIPTION_IDENTIFIER_AVAILABLE: _V.BYTE,
    _P.SHARED_SUBSCRIPTION_AVAILABLE: _V.BYTE,
}

PropertyValue = int | str | bytes | tuple[str, str]


def encode_properties(properties: Iterable[tuple[Property, PropertyValue]]) -> bytes:
    """MQTT 5 properties, their length first. ValueError for a value its form cannot hold."""
    out = bytearray()
    for key, value in properties:
        form = TYPES[key]
        out.append(key)
        if form in (Value.BYTE, Value.TWO, Value.FOUR):
            assert isinstance(value, int)
            out += value.to_bytes(form.value, "big")  # OverflowError is a ValueError's kin
        elif form is Value.VARINT:
            assert isinstance(value, int)
            out += encode_length(value)
        elif form is Value.UTF8:
            assert isinstance(value, str)
            out += encode_string(value, key.name.lower())
        elif form is Value.BINARY:
            assert isinstance(value, bytes)
            out += encode_binary(value, key.name.lower())
        else:
            assert isinstance(value, tuple)
            out += encode_string(value[0], "user property name")
            out += encode_string(value[1], "user property value")
    return encode_length(len(out)) + bytes(out)


def decode_properties(
    raw: bytes | memoryview, pos: int, what: str = "properties"
) -> tuple[list[tuple[Property, PropertyValue]], int]:
    """The MQTT 5 properties at ``pos`` of a complete packet, and the position after them.
    RemoteProtocolError for an unknown identifier or a value that runs past them."""
    length, pos = read_properties_length(raw, pos, what)
    end = pos + length
    view = raw[:end]
    out: list[tuple[Property, PropertyValue]] = []
    while pos < end:
        try:
            key = Property(view[pos])
        except ValueError:
            unknown = f"{what}: unknown property 0x{view[pos]:02x}"
            raise RemoteProtocolError("malformed", unknown) from None
        pos += 1
        form = TYPES[key]
        value: PropertyValue
        if form in (Value.BYTE, Value.TWO, Value.FOUR):
            size = form.value
            assert isinstance(size, int)
            if pos + size > end:
                raise RemoteProtocolError("malformed", f"{what} truncated")
            value = int.from_bytes(view[pos : pos + size], "big")
            pos += size
        elif form is Value.VARINT:
            decoded = decode_varint(view, pos, end, what)
            if decoded is None:
                raise RemoteProtocolError("malformed", f"{what} truncated")
            value, pos = decoded
        elif form is Value.UTF8:
            value, pos = read_utf8(view, pos, what)
        elif form is Value.BINARY:
            value, pos = read_binary(view, pos, what)
        else:
            name, pos = read_utf8(view, pos, what)
            text, pos = read_utf8(view, pos, what)
            value = (name, text)
        out.append((key, value))
    return out, end


# -- writing -------------------------------------------------------------------------------


def encode_length(n: int) -> bytes:
    """MQTT's variable byte integer (one to four bytes): the remaining length and MQTT 5's
    lengths."""
    if not 0 <= n <= MAX_REMAINING:
        raise ValueError(f"a remaining length of {n} does not fit MQTT's four bytes")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode_binary(value: bytes, what: str) -> bytes:
    """MQTT binary data (two length bytes, then the bytes)."""
    if len(value) > MAX_FIELD:
        raise ValueError(f"{what} of {len(value)} bytes does not fit an MQTT field")
    return len(value).to_bytes(2, "big") + value


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
    return packet(Kind.CONNECT << 4, body)


# CONNACK codes, MQTT 3.1/3.1.1 return code and MQTT 5 reason code.
SERVER_UNAVAILABLE = (3, 0x88)
NOT_AUTHORIZED = (5, 0x87)


def connack(protocol_level: int, code: tuple[int, int]) -> bytes:
    """A refusing CONNACK in the dialect of the client's CONNECT."""
    legacy, v5 = code
    if protocol_level == MQTT_5:
        return packet(Kind.CONNACK << 4, bytes((0, v5, 0)))  # not present, reason, no props
    return packet(Kind.CONNACK << 4, bytes((0, legacy)))


def ack(kind: Kind, packet_id: int, protocol_level: int, reason: int = 0) -> bytes:
    """A PUBACK or PUBREC (MQTT 5: with its reason code; 3.1.1 has none)."""
    body = packet_id.to_bytes(2, "big")
    if protocol_level == MQTT_5:
        body += bytes((reason,))
    return packet(kind << 4, body)


def suback(
    packet_id: int, codes: Sequence[int], protocol_level: int, properties: bytes = b""
) -> bytes:
    """A SUBACK with a code for each filter (MQTT 5: ``properties`` as encoded, or none)."""
    body = packet_id.to_bytes(2, "big")
    if protocol_level == MQTT_5:
        body += properties or b"\x00"
    return packet(Kind.SUBACK << 4, body + bytes(codes))


def subscribe(head: bytes, filters: Iterable[tuple[str, int]]) -> bytes:
    """A SUBSCRIBE of ``filters`` (each with its options byte) after ``head`` (the packet
    id, and MQTT 5's properties as received)."""
    body = head + b"".join(encode_string(f, "topic filter") + bytes((o,)) for f, o in filters)
    return packet(Kind.SUBSCRIBE << 4 | 0x02, body)


def disconnect(
    protocol_level: int,
    reason: int = 0,
    properties: Iterable[tuple[Property, PropertyValue]] = (),
) -> bytes:
    """A DISCONNECT: MQTT 5 with a reason code and properties (a Server Reference, a Reason
    String); 3.1.1's has neither."""
    if protocol_level != MQTT_5:
        return DISCONNECT
    return packet(Kind.DISCONNECT << 4, bytes((reason,)) + encode_properties(properties))


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
    if data[0] != Kind.CONNACK << 4:
        raise RemoteProtocolError("not_connack", f"first packet is not CONNACK (0x{data[0]:02x})")
    header = fixed_header(data, 0, len(data))
    if header is None:
        return None
    pos, length = header
    if length < 2 or length > max_size:
        raise RemoteProtocolError("malformed", f"CONNACK of {length} bytes")
    if len(data) < pos + 2:
        return None
    return Connack(bool(data[pos] & 0x01), data[pos + 1])
