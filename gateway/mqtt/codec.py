"""Sans-IO reader for the first MQTT packet, and the few packets the gateway writes.

The gateway parses exactly one packet per connection: the client's CONNECT. After it is
forwarded, bytes are relayed untouched. Nothing here imports Twisted or does I/O, in the
manner of h11: feed bytes with ``receive_data``, ask ``next_event``.
"""

from __future__ import annotations

import enum

import attrs

from gateway.mqtt.errors import RemoteProtocolError
from gateway.mqtt.packets import MQTT_5
from gateway.mqtt.packets import PROTOCOL_NAMES as _PROTOCOL_NAMES

_CONNECT = 1
_FIXED_HEADER_MAX = 5  # one type byte and at most four remaining-length bytes


class _NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA = _NeedData.NEED_DATA


@attrs.frozen
class Connect:
    """A well-formed CONNECT packet, with the fields the gateway logs or acts on."""

    protocol_level: int
    client_id: str
    clean_start: bool
    keep_alive: int
    has_username: bool
    has_password: bool
    has_will: bool
    packet: bytes  # the whole packet, to be forwarded unchanged


class ConnectReader:
    """Accumulate bytes until one complete, valid CONNECT is present.

    ``max_packet_size`` bounds the whole packet (fixed header included); a larger
    announced length is refused as soon as the length is known, without waiting
    for the body. Once a Connect is returned, ``trailing_data`` holds whatever the
    client sent after it (it belongs to the relay).
    """

    def __init__(self, max_packet_size: int) -> None:
        self._max = max_packet_size
        self._buffer = bytearray()
        self._done = False

    def receive_data(self, data: bytes) -> None:
        if self._done:
            raise RuntimeError("the CONNECT has already been read")
        self._buffer += data

    @property
    def trailing_data(self) -> bytes:
        return bytes(self._buffer) if self._done else b""

    def next_event(self) -> Connect | _NeedData:
        if self._done:
            raise RuntimeError("the CONNECT has already been read")
        buf = self._buffer
        if not buf:
            return NEED_DATA
        if buf[0] >> 4 != _CONNECT:
            raise RemoteProtocolError(
                "not_connect", f"first packet is not CONNECT (first byte 0x{buf[0]:02x})"
            )
        if buf[0] & 0x0F:
            raise RemoteProtocolError("malformed", "CONNECT fixed-header flags are not zero")
        header = _remaining_length(buf)
        if header is None:
            return NEED_DATA
        length, header_size = header
        total = header_size + length
        if total > self._max:
            raise RemoteProtocolError(
                "too_large", f"CONNECT of {total} bytes exceeds max_packet_size {self._max}"
            )
        if len(buf) < total:
            return NEED_DATA
        packet = bytes(buf[:total])
        event = _parse_connect(packet, header_size)
        del self._buffer[:total]
        self._done = True
        return event


def _remaining_length(buf: bytearray) -> tuple[int, int] | None:
    """Decode the variable-length 'remaining length'; None if more bytes are needed."""
    value = 0
    for i in range(1, _FIXED_HEADER_MAX):
        if i >= len(buf):
            return None
        byte = buf[i]
        value |= (byte & 0x7F) << (7 * (i - 1))
        if not byte & 0x80:
            return value, i + 1
    raise RemoteProtocolError("malformed", "remaining length is longer than four bytes")


class _Cursor:
    """Bounds-checked reads over one packet body."""

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
        raw = self.binary(what)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError("malformed", f"{what} is not valid UTF-8") from None
        if "\x00" in text:
            raise RemoteProtocolError("malformed", f"{what} contains U+0000")
        return text

    def varint(self, what: str) -> int:
        value = 0
        for shift in range(0, 28, 7):
            byte = self.u8(what)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise RemoteProtocolError("malformed", f"{what} length is longer than four bytes")

    def properties(self, what: str) -> None:
        # MQTT 5 properties: validated for length only; the broker interprets them.
        self.take(self.varint(what), what)


def _parse_connect(packet: bytes, header_size: int) -> Connect:
    cur = _Cursor(packet, header_size)
    name = cur.binary("protocol name")
    level = cur.u8("protocol level")
    if _PROTOCOL_NAMES.get(level) != name:
        raise RemoteProtocolError(
            "bad_protocol", f"unsupported protocol {name[:16]!r} level {level}"
        )
    flags = cur.u8("connect flags")
    if flags & 0x01:
        raise RemoteProtocolError("malformed", "reserved connect flag is set")
    has_will = bool(flags & 0x04)
    will_qos = (flags >> 3) & 0x03
    will_retain = bool(flags & 0x20)
    has_password = bool(flags & 0x40)
    has_username = bool(flags & 0x80)
    if will_qos == 3:
        raise RemoteProtocolError("malformed", "will QoS is 3")
    if not has_will and (will_qos or will_retain):
        raise RemoteProtocolError("malformed", "will QoS or retain set without a will")
    if has_password and not has_username and level != MQTT_5:
        raise RemoteProtocolError("malformed", "password flag without username flag")
    keep_alive = cur.u16("keep alive")
    if level == MQTT_5:
        cur.properties("properties")
    client_id = cur.utf8("client identifier")
    if has_will:
        if level == MQTT_5:
            cur.properties("will properties")
        cur.utf8("will topic")
        cur.binary("will payload")
    if has_username:
        cur.utf8("user name")
    if has_password:
        cur.binary("password")
    if cur.pos != len(packet):
        raise RemoteProtocolError(
            "malformed", f"{len(packet) - cur.pos} unexpected bytes at the end of CONNECT"
        )
    return Connect(
        protocol_level=level,
        client_id=client_id,
        clean_start=bool(flags & 0x02),
        keep_alive=keep_alive,
        has_username=has_username,
        has_password=has_password,
        has_will=has_will,
        packet=packet,
    )
