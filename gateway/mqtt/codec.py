"""Sans-IO reader for the first MQTT packet, and the few packets the gateway writes.

The gateway parses exactly one packet per connection: the client's CONNECT. After it is
forwarded, bytes are relayed untouched. Nothing here imports Twisted or does I/O, in the
manner of h11: feed bytes with ``receive_data``, ask ``next_event``.
"""

from __future__ import annotations

import enum

import attrs

from gateway.mqtt.errors import RemoteProtocolError
from gateway.mqtt.packets import MQTT_5, Cursor, Kind, fixed_header
from gateway.mqtt.packets import PROTOCOL_NAMES as _PROTOCOL_NAMES


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
    username: str | None = None  # as the device sent it (the authorization hook is told)


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
        if buf[0] >> 4 != Kind.CONNECT:
            raise RemoteProtocolError(
                "not_connect", f"first packet is not CONNECT (first byte 0x{buf[0]:02x})"
            )
        if buf[0] & 0x0F:
            raise RemoteProtocolError("malformed", "CONNECT fixed-header flags are not zero")
        header = fixed_header(buf, 0, len(buf))
        if header is None:
            return NEED_DATA
        header_size, length = header
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


def _parse_connect(packet: bytes, header_size: int) -> Connect:
    cur = Cursor(packet, header_size)
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
    username = cur.utf8("user name") if has_username else None
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
        username=username,
    )
