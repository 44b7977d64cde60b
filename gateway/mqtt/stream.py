"""Sans-IO reader of the MQTT stream after the CONNECT (3.1, 3.1.1, 5.0), for the policy edge.

Feed the bytes of one direction as they come (``feed``), in any split; get the complete
packets, each as a ``Packet`` whose ``raw`` is a view of the bytes received (no copy when
the packet arrived within one chunk; one copy of the packet when it spanned chunks). For
PUBLISH and SUBSCRIBE from the device, the fields a policy decides on are read: the topic,
QoS and packet id of a PUBLISH (its payload is never copied or decoded), the packet id and
each topic filter with its options of a SUBSCRIBE. From the broker only the boundaries
matter (so that a packet of the gateway's own can go between two of the broker's):
``fields=False`` reads nothing else.

A packet announcing more than ``max_packet_size`` bytes, a remaining length over four
bytes, or a PUBLISH/SUBSCRIBE that is malformed raises ``RemoteProtocolError`` (the
reader is then unusable: the connection is to be closed). No Twisted, no I/O.
"""

from __future__ import annotations

import attrs

from gateway.mqtt.errors import RemoteProtocolError
from gateway.mqtt.packets import MQTT_5, Kind, fixed_header, read_u16, read_utf8, skip_properties

PUBLISH = Kind.PUBLISH
SUBSCRIBE = Kind.SUBSCRIBE
SUBACK = Kind.SUBACK


@attrs.frozen
class Subscription:
    topic_filter: str
    options: int  # MQTT 5 subscription options byte; 3.1.1: the requested QoS


@attrs.frozen
class Packet:
    """One complete packet. ``raw``: its bytes (fixed header included)."""

    kind: int  # the packet type, 1..15
    flags: int  # the fixed header's low four bits
    raw: memoryview
    topic: str | None = None  # PUBLISH
    qos: int = 0  # PUBLISH
    packet_id: int | None = None  # PUBLISH with QoS > 0, SUBSCRIBE
    payload_size: int = 0  # PUBLISH: bytes of payload
    subscriptions: tuple[Subscription, ...] = ()  # SUBSCRIBE


class StreamReader:
    """Packet boundaries (and, with ``fields``, the fields above) of one direction."""

    def __init__(self, protocol_level: int, max_packet_size: int, fields: bool = True) -> None:
        self.level = protocol_level
        self.max = max_packet_size
        self.fields = fields
        self._partial = bytearray()  # the start of a packet that has not all arrived

    @property
    def buffered(self) -> int:
        """Bytes held back: the part of a packet received so far."""
        return len(self._partial)

    def feed(self, data: bytes) -> list[Packet]:
        """The packets completed by ``data`` (and what came before it), in order."""
        if self._partial:
            self._partial += data
            buf: bytes | bytearray = self._partial
        else:
            buf = data
        view = memoryview(buf)
        out = []
        pos = 0
        end = len(buf)
        while pos < end:
            header = fixed_header(buf, pos, end)
            if header is None:
                break
            body_start, length = header
            total = body_start - pos + length
            if total > self.max:
                raise RemoteProtocolError(
                    "too_large", f"a packet of {total} bytes exceeds max_packet_size {self.max}"
                )
            stop = body_start + length
            if stop > end:
                break
            first = buf[pos]
            if buf is self._partial:
                raw = memoryview(bytes(view[pos:stop]))  # the buffer is about to change
            else:
                raw = view[pos:stop]
            out.append(self._packet(first >> 4, first & 0x0F, raw, body_start - pos))
            pos = stop
        if buf is self._partial:
            view.release()  # nothing refers to it (those packets were copied out)
            del self._partial[:pos]
        elif pos < end:
            self._partial += view[pos:end]
        return out

    def _packet(self, kind: int, flags: int, raw: memoryview, body: int) -> Packet:
        if not self.fields:
            return Packet(kind, flags, raw)
        if kind == PUBLISH:
            return self._publish(flags, raw, body)
        if kind == SUBSCRIBE:
            return self._subscribe(flags, raw, body)
        return Packet(kind, flags, raw)

    def _publish(self, flags: int, raw: memoryview, pos: int) -> Packet:
        qos = (flags >> 1) & 0x03
        if qos == 3:
            raise RemoteProtocolError("malformed", "PUBLISH with QoS 3")
        topic, pos = read_utf8(raw, pos, "PUBLISH topic")
        packet_id = None
        if qos:
            packet_id, pos = read_u16(raw, pos, "PUBLISH packet id")
            if packet_id == 0:
                raise RemoteProtocolError("malformed", "PUBLISH packet id 0")
        if self.level == MQTT_5:
            pos = skip_properties(raw, pos, "PUBLISH properties")
        if not topic and self.level != MQTT_5:
            raise RemoteProtocolError("malformed", "PUBLISH with an empty topic")
        if "+" in topic or "#" in topic:
            raise RemoteProtocolError("malformed", "PUBLISH topic with a wildcard")
        return Packet(PUBLISH, flags, raw, topic, qos, packet_id, len(raw) - pos)

    def _subscribe(self, flags: int, raw: memoryview, pos: int) -> Packet:
        if flags != 0x02:
            raise RemoteProtocolError("malformed", "SUBSCRIBE fixed-header flags are not 0010")
        packet_id, pos = read_u16(raw, pos, "SUBSCRIBE packet id")
        if self.level == MQTT_5:
            pos = skip_properties(raw, pos, "SUBSCRIBE properties")
        subs = []
        while pos < len(raw):
            topic_filter, pos = read_utf8(raw, pos, "SUBSCRIBE topic filter")
            if pos >= len(raw):
                raise RemoteProtocolError("malformed", "SUBSCRIBE truncated in options")
            subs.append(Subscription(topic_filter, raw[pos]))
            pos += 1
        if not subs:
            raise RemoteProtocolError("malformed", "SUBSCRIBE without a topic filter")
        return Packet(SUBSCRIBE, flags, raw, packet_id=packet_id, subscriptions=tuple(subs))
