"""The MQTT policy edge for one relayed session: per-device limits and topic rules.

Only for listeners with ``messages_rate``/``bytes_rate`` or an ``acl_file``: the relay's
short path is untouched otherwise.

Device to broker: the bytes are cut into packets (``mqtt.stream``).
- A PUBLISH whose topic the rules deny is not forwarded: MQTT 5 QoS 1/2 gets PUBACK/PUBREC
  0x87 (not authorized), 3.1.1 QoS 1/2 gets PUBACK/PUBREC (as Mosquitto acknowledges a
  denied PUBLISH), QoS 0 nothing; or, with ``acl_deny_action = disconnect``, the session
  ends (MQTT 5: DISCONNECT 0x87 first).
- A SUBSCRIBE goes on with its permitted filters only; the broker's SUBACK then gets the
  refused filters' codes back in their places (0x80 in 3.1.1, 0x87 in MQTT 5). With none
  permitted, the gateway answers the SUBACK itself.
- A PUBLISH pays its tokens (``mqtt.limits``); when a bucket is short, that PUBLISH and
  whatever follows it are held and the device is not read from (TCP backpressure, as EMQX
  does) until the wait is over. Nothing is dropped; other devices are not slowed. The
  broker's flow control (its write buffer full) pauses the device as before.

Broker to device: cut into packets too (boundaries only, and the SUBACKs above), so that a
packet of the gateway's own always goes between two of the broker's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from gateway.mqtt.acl import READ, WRITE, Acl, DeviceRules
from gateway.mqtt.errors import RemoteProtocolError
from gateway.mqtt.limits import DeviceLimits, pause_for
from gateway.mqtt.packets import MQTT_5, encode_length
from gateway.mqtt.stream import PUBLISH, SUBACK, SUBSCRIBE, Packet, StreamReader

NOT_AUTHORIZED = 0x87
SUBACK_FAILURE_311 = 0x80
# The MQTT 5 DISCONNECT reason code of each way the gateway ends a relayed session itself.
DISCONNECT_REASONS = {
    "revoked": 0x87,  # not authorized: its certificate was revoked
    "shutdown": 0x8B,  # server shutting down
    "reload": 0x98,  # administrative action: a reload removed the listener
    "bad_packet": 0x81,  # malformed packet (over max_packet_size: 0x95, below)
}


@attrs.define
class Who:
    """The device as the rules see it: the certificate's identity and its client id."""

    username: str
    client_id: str


@implementer(IPushProducer)
class DevicePolicy:
    """Between a device's transport and the broker connection. It is the producer the
    broker's transport pauses and resumes (flow control), and it pauses the device itself
    while a PUBLISH waits for its tokens."""

    def __init__(
        self,
        device: Any,  # the device's transport: write, pauseProducing, resumeProducing
        forward: Callable[[bytes], None],
        end: Callable[[str, str], None],  # (reason, detail): the session is to be ended
        limits: DeviceLimits | None,
        acl: Callable[[], Acl | None],  # the rules in force now (a reload may change them)
        who: Who,
        protocol_level: int,
        max_packet_size: int,
        reactor: Any,
        stats: Any = None,  # the listener's ListenerStats
        deny_action: str = "ignore",
        on_denied: Callable[[str, str, str], None] = lambda what, topic, rule: None,
    ) -> None:
        self.device = device
        self.forward = forward
        self.end = end
        self.acl = acl
        self.who = who
        self.level = protocol_level
        self.reactor = reactor
        self.stats = stats
        self.deny_action = deny_action
        self.on_denied = on_denied
        self.reader = StreamReader(protocol_level, max_packet_size)
        self.broker_reader = StreamReader(protocol_level, 1 << 28, fields=False)
        self.buckets = limits.buckets(reactor.seconds()) if limits is not None else None
        self.disconnect_over_rate = limits is not None and limits.disconnect
        self.held: deque[Packet] = deque()
        self._timer: Any = None
        self._flow_paused = False
        # SUBSCRIBE packet id -> (filters asked, positions refused): the broker's SUBACK
        # gets the refused codes back in their places.
        self._subscriptions: dict[int, tuple[int, tuple[int, ...]]] = {}
        self._ended = False
        self._disconnect_sent = False
        self._rules: DeviceRules | None = None  # the rules in force, for this device
        self._broker_need = 0  # bytes of the broker's current packet still to come
        self._broker_head = b""  # the start of a fixed header split across reads
        self._to_send: list[bytes] = []  # the gateway's own packets, for the next boundary

    # -- device to broker -------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        # The common case first: one whole short packet in the chunk, nothing held.
        n = len(data)
        if n >= 2 and data[1] < 0x80 and data[1] + 2 == n and not self.held:
            if not self.reader.buffered and not self._ended:
                kind = data[0] >> 4
                if kind == PUBLISH:
                    if self._fast_publish(data):
                        return
                elif kind != SUBSCRIBE:
                    self.forward(data)  # PUBACK, PINGREQ, ...: nothing to judge
                    return
        try:
            packets = self.reader.feed(data)
        except RemoteProtocolError as e:
            self._end("bad_packet", f"{e.kind}: {e.detail}")
            return
        if self.held:
            self.held.extend(packets)
            return
        self._send(packets)

    def _fast_publish(self, data: bytes) -> bool:
        """A whole short PUBLISH permitted and within the rate: forwarded as it came, and
        True. False: the general path decides (a denial, a wait, anything unusual)."""
        n = len(data)
        qos = (data[0] >> 1) & 3
        size = data[2] << 8 | data[3]
        end = 4 + size + (2 if qos else 0)
        if qos == 3 or size == 0 or end > n or n > self.reader.max:
            return False
        acl = self.acl()
        if acl is not None:
            rules = self._rules
            if rules is None or rules.acl is not acl:
                return False  # the general path (re)builds the rules
            topic = data[4 : 4 + size]
            known = rules.known(topic)
            if not known:  # denied, or not decided yet
                return False
        if self.buckets is not None:
            now = self.reactor.seconds()
            messages, sizes = self.buckets
            if messages is not None:
                m_tokens = messages.tokens + (now - messages.at) * messages.rate
                if m_tokens > messages.burst:
                    m_tokens = messages.burst
                if m_tokens < 1:
                    return False
            if sizes is not None:
                s_tokens = sizes.tokens + (now - sizes.at) * sizes.rate
                if s_tokens > sizes.burst:
                    s_tokens = sizes.burst
                if s_tokens < n:
                    return False
                sizes.tokens, sizes.at = s_tokens - n, now
            if messages is not None:
                messages.tokens, messages.at = m_tokens - 1, now
        self.forward(data)
        return True

    def _send(self, packets: list[Packet] | deque[Packet]) -> None:
        """Forward packets in order until one must wait; hold it and the rest."""
        now = self.reactor.seconds()
        out: list[bytes | memoryview] = []
        for i, packet in enumerate(packets):
            if self._ended:
                return
            raw = self._permitted(packet)
            if raw is None:
                continue
            wait = 0.0
            if self.buckets is not None and packet.kind == PUBLISH:
                wait = pause_for(self.buckets, len(packet.raw), now)
            if wait > 0 and self.disconnect_over_rate:
                self._flush(out)
                self._end("message_rate", f"over the rate by {wait:.2f}s of tokens")
                return
            if wait > 0:
                self._flush(out)
                self.held.extend(list(packets)[i:])
                if self.stats is not None:
                    self.stats.throttled += 1
                    self.stats.throttled_seconds += wait
                self._timer = self.reactor.callLater(wait, self._release)
                self.device.pauseProducing()
                return
            out.append(raw)
        self._flush(out)

    def _permitted(self, packet: Packet) -> bytes | memoryview | None:
        """What of ``packet`` goes to the broker (None: nothing), by the rules in force."""
        acl = self.acl()
        if acl is None or packet.kind not in (PUBLISH, SUBSCRIBE):
            return packet.raw
        rules = self._rules
        if rules is None or rules.acl is not acl:  # the first packet, or a reload
            rules = self._rules = DeviceRules(acl, self.who.username, self.who.client_id)
        if packet.kind == PUBLISH:
            assert packet.topic is not None
            if rules.allows(WRITE, packet.topic):
                rules.remember(packet.topic.encode())
                return packet.raw
            self._denied("publish", packet.topic, rules.rule_of(WRITE, packet.topic))
            if self.deny_action == "disconnect":
                self._end("acl_denied", f"PUBLISH to {packet.topic!r} denied")
                return None
            if packet.qos and packet.packet_id is not None:
                kind = 0x40 if packet.qos == 1 else 0x50  # PUBACK, PUBREC
                pid = packet.packet_id.to_bytes(2, "big")
                if self.level == MQTT_5:
                    self._to_device(bytes([kind, 3]) + pid + b"\x87")
                else:
                    self._to_device(bytes([kind, 2]) + pid)
            return None
        allowed = []
        refused = []
        for i, sub in enumerate(packet.subscriptions):
            if rules.allows(READ, sub.topic_filter):
                allowed.append(sub)
            else:
                refused.append(i)
                self._denied("subscribe", sub.topic_filter, rules.rule_of(READ, sub.topic_filter))
        if not refused:
            return packet.raw
        if self.deny_action == "disconnect":
            self._end("acl_denied", "SUBSCRIBE denied")
            return None
        assert packet.packet_id is not None
        code = NOT_AUTHORIZED if self.level == MQTT_5 else SUBACK_FAILURE_311
        if not allowed:
            self._to_device(_suback(packet.packet_id, [code] * len(refused), self.level))
            return None
        self._subscriptions[packet.packet_id] = (len(packet.subscriptions), tuple(refused))
        return _subscribe(packet, allowed, self.level)

    def _denied(self, what: str, topic: str, rule: str) -> None:
        if self.stats is not None:
            self.stats.acl_denied[f"{what} {rule}"] += 1
        self.on_denied(what, topic, rule)

    def _end(self, reason: str, detail: str) -> None:
        if self._ended:
            return
        self._ended = True
        self.stop()
        code = {"acl_denied": NOT_AUTHORIZED, "message_rate": 0x96}.get(reason)
        if reason == "bad_packet":
            code = 0x95 if detail.startswith("too_large") else 0x81
        if code is not None:
            self._disconnect(code)
        self.end(reason, detail)

    def disconnect(self, ended_by: str) -> None:
        """The session is being closed by the gateway (``ended_by``: revoked, shutdown,
        reload): MQTT 5 devices get a DISCONNECT with its reason code first."""
        code = DISCONNECT_REASONS.get(ended_by)
        if code is not None:
            self._disconnect(code)

    def _disconnect(self, code: int) -> None:
        if self.level == MQTT_5 and not self._disconnect_sent:
            self._disconnect_sent = True
            self._to_device(bytes([0xE0, 2, code, 0]))
            if self.stats is not None:
                self.stats.disconnects_sent[f"0x{code:02X}"] += 1

    def _flush(self, out: list[bytes | memoryview]) -> None:
        if out:
            self.forward(b"".join(out))

    def _release(self) -> None:
        """The held PUBLISH has waited for its tokens (taken already): forward it, then
        the rest as the buckets allow; read from the device again once nothing is held."""
        self._timer = None
        first = self.held.popleft()
        rest = list(self.held)
        self.held.clear()
        self.forward(bytes(first.raw))
        self._send(rest)
        if not self.held and not self._flow_paused and not self._ended:
            self.device.resumeProducing()

    def stop(self) -> None:
        """The session ended: drop the timer (and what was held: the device is gone)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.held.clear()

    # -- broker to device ----------------------------------------------------------------------

    def from_broker(self, data: bytes) -> None:
        """The broker's bytes to the device. Only their packet boundaries are followed
        (cheaply) so that a packet of the gateway's own goes between two of the broker's;
        while a SUBACK is to be completed they are read as packets."""
        if self._ended:
            return
        n = len(data)
        if (
            not self._broker_need
            and not self._broker_head
            and n >= 2
            and data[1] < 0x80
            and data[1] + 2 == n
            and not self.broker_reader.buffered
            and not self._subscriptions
        ):
            self.device.write(data)  # one whole short packet: still at a boundary
            if self._to_send:
                self._flush_own()
            return
        if self.broker_reader.buffered or (
            self._subscriptions and not self._broker_need and not self._broker_head
        ):
            self._from_broker_read(data)
            return
        try:
            self._follow(data)
        except RemoteProtocolError as e:
            self._broker_failed(e)
            return
        self.device.write(data)
        if self._to_send and not self._broker_need and not self._broker_head:
            self._flush_own()

    def _follow(self, data: bytes) -> None:
        """Advance over ``data``: how much of the broker's current packet is still to come
        (``_broker_need``), or the start of a fixed header split across reads."""
        n = len(data)
        if self._broker_need >= n:
            self._broker_need -= n
            return
        pos = self._broker_need
        head = self._broker_head  # with a split header, pos is 0
        while pos < n:
            header = head + data[pos : pos + 5 - len(head)]
            length, shift, size, complete = 0, 0, 1, False
            while size < len(header):
                byte = header[size]
                length |= (byte & 0x7F) << shift
                size += 1
                if not byte & 0x80:
                    complete = True
                    break
                shift += 7
                if size > 4:
                    raise RemoteProtocolError("malformed", "remaining length over four bytes")
            if not complete:  # the read ended inside the header
                self._broker_head = header
                self._broker_need = 0
                return
            pos += size - len(head) + length
            head = b""
        self._broker_head = b""
        self._broker_need = pos - n

    def _from_broker_read(self, data: bytes) -> None:
        try:
            packets = self.broker_reader.feed(data)
        except RemoteProtocolError as e:
            self._broker_failed(e)
            return
        out: list[bytes | memoryview] = []
        for packet in packets:
            if packet.kind == SUBACK and self._subscriptions:
                out.append(self._merged_suback(packet))
            else:
                out.append(packet.raw)
        if out:
            self.device.write(b"".join(out))
        if self._to_send and not self.broker_reader.buffered:
            self._flush_own()

    def _broker_failed(self, e: RemoteProtocolError) -> None:
        # Not MQTT as read here (a remaining length over four bytes): the session ends.
        self._ended = True
        self.stop()
        self.end("bad_packet", f"from the broker: {e.kind}: {e.detail}")

    def _to_device(self, packet: bytes) -> None:
        """A packet of the gateway's own: now if the broker's stream is between packets,
        else once its current packet is through."""
        if self._broker_need or self._broker_head or self.broker_reader.buffered:
            self._to_send.append(packet)
        else:
            self.device.write(packet)

    def _flush_own(self) -> None:
        own, self._to_send = self._to_send, []
        self.device.write(b"".join(own))

    def _merged_suback(self, packet: Packet) -> bytes | memoryview:
        raw = bytes(packet.raw)
        body = raw[_header_size(raw) :]
        if len(body) < 2:
            return packet.raw
        pid = int.from_bytes(body[:2], "big")
        pending = self._subscriptions.pop(pid, None)
        if pending is None:
            return packet.raw
        asked, refused = pending
        pos = 2
        properties = b""
        if self.level == MQTT_5:
            start = pos
            length, pos = _varint(body, pos)
            pos += length
            properties = body[start:pos]
        codes = list(body[pos:])
        code = NOT_AUTHORIZED if self.level == MQTT_5 else SUBACK_FAILURE_311
        merged = []
        it = iter(codes)
        for i in range(asked):
            merged.append(code if i in refused else next(it, code))
        return _suback(pid, merged, self.level, properties)

    # -- IPushProducer, for the broker's transport (flow control) -------------------------

    def pauseProducing(self) -> None:
        self._flow_paused = True
        self.device.pauseProducing()

    def resumeProducing(self) -> None:
        self._flow_paused = False
        if not self.held and not self._ended:
            self.device.resumeProducing()

    def stopProducing(self) -> None:
        self.device.stopProducing()


def _suback(pid: int, codes: list[int], level: int, properties: bytes = b"") -> bytes:
    body = pid.to_bytes(2, "big")
    if level == MQTT_5:
        body += properties or b"\x00"
    body += bytes(codes)
    return b"\x90" + encode_length(len(body)) + body


def _subscribe(packet: Packet, allowed: list[Any], level: int) -> bytes:
    """The SUBSCRIBE with only ``allowed`` filters (its packet id and properties kept)."""
    raw = bytes(packet.raw)
    body = raw[_header_size(raw) :]
    pos = 2
    if level == MQTT_5:
        length, pos = _varint(body, pos)
        pos += length
    head = body[:pos]
    filters = b"".join(
        len(s.topic_filter.encode()).to_bytes(2, "big")
        + s.topic_filter.encode()
        + bytes([s.options])
        for s in allowed
    )
    new_body = head + filters
    return b"\x82" + encode_length(len(new_body)) + new_body


def _header_size(raw: bytes) -> int:
    i = 1
    while raw[i] & 0x80:
        i += 1
    return i + 1


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
