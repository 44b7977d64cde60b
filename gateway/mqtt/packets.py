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


class Boundaries:
    """Follows where the packets of one direction of a stream begin and end, without
    reading them: ``between`` tells whether the bytes fed so far end at a packet boundary
    (where a packet of the gateway's own may go). One step per packet, a short one for
    the usual two-byte fixed header."""

    __slots__ = ("head", "need")

    def __init__(self) -> None:
        self.need = 0  # bytes of the current packet still to come
        self.head = b""  # the start of a fixed header split across reads

    @property
    def between(self) -> bool:
        return not self.need and not self.head

    def feed(self, data: bytes | memoryview) -> None:
        """Advance over ``data``; RemoteProtocolError on a length of five bytes."""
        n = len(data)
        pos = self.need
        if pos >= n:
            self.need = pos - n
            return
        head = self.head
        if not head:  # packets of under 128 bytes: a two-byte header, one step each
            while pos + 1 < n and data[pos + 1] < 0x80:
                pos += data[pos + 1] + 2
        while pos < n:
            header = head + bytes(data[pos : pos + 5 - len(head)])
            decoded = decode_varint(header, 1, len(header))
            if decoded is None:  # the read ended inside the header
                self.head, self.need = header, 0
                return
            length, size = decoded
            pos += size - len(head) + length
            head = b""
        self.head, self.need = b"", pos - n


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


def disconnect(protocol_level: int, reason: int = 0, properties: bytes = b"\x00") -> bytes:
    """A DISCONNECT: MQTT 5 with a reason code and its properties as encoded
    (``properties.encode_properties``: a Server Reference, a Reason String; none by
    default); 3.1.1's has neither."""
    if protocol_level != MQTT_5:
        return DISCONNECT
    return packet(Kind.DISCONNECT << 4, bytes((reason,)) + properties)


def subscribe_with(raw: bytes, filters: Iterable[tuple[str, int]], protocol_level: int) -> bytes:
    """The complete SUBSCRIBE ``raw`` with only ``filters`` (its packet id and MQTT 5
    properties kept byte for byte)."""
    start = body_start(raw)
    pos = start + 2
    if protocol_level == MQTT_5:
        pos = skip_properties(raw, pos, "SUBSCRIBE properties")
    return subscribe(raw[start:pos], filters)


def ack_packet_id(raw: bytes) -> int | None:
    """The packet id of a complete SUBACK (or PUBACK, ...): its first two body bytes."""
    pos = body_start(raw)
    return int.from_bytes(raw[pos : pos + 2], "big") if len(raw) >= pos + 2 else None


def suback_refilled(
    raw: bytes, asked: int, refused: Sequence[int], code: int, protocol_level: int
) -> bytes | None:
    """The complete SUBACK ``raw`` answering a SUBSCRIBE of ``asked`` filters of which the
    broker saw all but the ``refused`` positions: ``code`` at those, the broker's codes in
    order at the others (its properties kept). None if ``raw`` is not such a SUBACK."""
    pid = ack_packet_id(raw)
    if pid is None:
        return None
    pos = body_start(raw) + 2
    properties = b""
    if protocol_level == MQTT_5:
        try:
            end = skip_properties(raw, pos, "SUBACK properties")
        except RemoteProtocolError:
            return None
        properties, pos = raw[pos:end], end
    codes = iter(raw[pos:])
    merged = [code if i in refused else next(codes, code) for i in range(asked)]
    return suback(pid, merged, protocol_level, properties)


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
