"""The MQTT policy edge of one relayed session, sans-IO: per-device limits and topic rules.

Bytes and time in, actions out (no Twisted, no I/O), in the manner of ``proxy.session``:
``from_device(data, now)``, ``from_broker(data)``, ``release(now)`` (a wait is over) and
``close(by)`` (the gateway ends the session) each return the actions to carry out, in
order, or ``PASS`` when the bytes go on as they came (the common case, nothing built).
``proxy.policy.DevicePolicy`` is the Twisted adapter that carries them out.

Device to broker: the bytes are cut into packets (``mqtt.stream``).
- A PUBLISH whose topic the rules deny is not forwarded: MQTT 5 QoS 1/2 gets PUBACK/PUBREC
  0x87 (not authorized), 3.1.1 QoS 1/2 gets PUBACK/PUBREC (as Mosquitto acknowledges a
  denied PUBLISH), QoS 0 nothing; or, with ``acl_deny_action = disconnect``, the session
  ends (MQTT 5: DISCONNECT 0x87 first).
- A SUBSCRIBE goes on with its permitted filters only; the broker's SUBACK then gets the
  refused filters' codes back in their places (0x80 in 3.1.1, 0x87 in MQTT 5). With none
  permitted, the gateway answers the SUBACK itself.
- A PUBLISH pays its tokens (``mqtt.limits.Bucket``); when a bucket is short, that PUBLISH
  and whatever follows it are held and the device is not read from (``WaitUntil``: TCP
  backpressure, as EMQX does) until the wait is over. Nothing is dropped.

Broker to device: cut into packets too (boundaries only, and the SUBACKs above), so that a
packet of the gateway's own always goes between two of the broker's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from gateway.choices import AclReadMode, DenyAction
from gateway.mqtt.acl import READ, READ_DELIVERED, WRITE, Acl, DeviceRules
from gateway.mqtt.errors import RemoteProtocolError
from gateway.mqtt.limits import DeviceLimits, pause_for, pay_now
from gateway.mqtt.packets import (
    MQTT_5,
    Boundaries,
    Kind,
    ack,
    ack_packet_id,
    disconnect,
    suback,
    suback_refilled,
    subscribe_with,
)
from gateway.mqtt.policy_actions import (
    DISCONNECT_REASONS,
    PACKET_TOO_LARGE,
    PASS,
    Action,
    Actions,
    Denied,
    End,
    Forward,
    Pass,
    ResumeDevice,
    ToDevice,
    Told,
    WaitUntil,
    Who,
    closing_reason,
)
from gateway.mqtt.stream import SUBACK, Packet, StreamReader
from gateway.reasons import Reason

# Plain ints where every packet is looked at (an IntEnum compares slower).
PUBLISH, SUBSCRIBE, PUBREL = int(Kind.PUBLISH), int(Kind.SUBSCRIBE), int(Kind.PUBREL)
NOT_AUTHORIZED = 0x87
SUBACK_FAILURE_311 = 0x80


class PolicyEdge:
    """One session's policy edge. ``acl``: the rules in force now (a reload may change
    them, and the next packet is judged by the new ones)."""

    def __init__(
        self,
        limits: DeviceLimits | None,
        acl: Callable[[], Acl | None],
        who: Who,
        protocol_level: int,
        max_packet_size: int,
        now: float,
        deny_action: DenyAction = DenyAction.IGNORE,
        read_mode: AclReadMode = AclReadMode.FILTER,
    ) -> None:
        self.acl = acl
        # acl_read_mode = delivery: every PUBLISH the broker delivers is judged by the read
        # rules (its fields read), the QoS 2 ones dropped remembered until their PUBREL.
        self.deliveries = read_mode == AclReadMode.DELIVERY
        self._dropped: set[int] = set()
        self.who = who
        self.level = protocol_level
        self.deny_action = deny_action
        self.reader = StreamReader(protocol_level, max_packet_size)
        self.broker_reader = StreamReader(protocol_level, 1 << 28, fields=self.deliveries)
        self.buckets = limits.buckets(now) if limits is not None else None
        self.disconnect_over_rate = limits is not None and limits.disconnect
        self.held: deque[Packet] = deque()  # a PUBLISH waiting for tokens, and what followed
        self.ended = False
        self._told = False  # an MQTT 5 DISCONNECT went to the device
        # SUBSCRIBE packet id -> (filters asked, positions refused): the broker's SUBACK
        # gets the refused codes back in their places.
        self._subscriptions: dict[int, tuple[int, tuple[int, ...]]] = {}
        self._rules: DeviceRules | None = None  # the rules in force, for this device
        self._broker = Boundaries()  # where the broker's packets begin and end
        self._own: list[bytes] = []  # the gateway's own packets, for the next boundary

    @property
    def timed(self) -> bool:
        """Whether ``now`` matters (there are buckets): the adapter may pass 0 otherwise."""
        return self.buckets is not None

    # -- device to broker --------------------------------------------------------------------

    def from_device(self, data: bytes, now: float) -> Actions | Pass:
        """Bytes from the device."""
        if self.ended:
            return []
        # The common case first: one whole short packet in the chunk, nothing held. A
        # PUBLISH permitted before and within the rate goes as it came, its tokens taken
        # (inline: this runs for every message); anything unusual takes the general path.
        n = len(data)
        if n >= 2 and data[1] < 0x80 and data[1] + 2 == n and not self.held:
            if not self.reader.buffered:
                first = data[0]
                kind = first >> 4
                if kind == PUBLISH:
                    qos = (first >> 1) & 3
                    size = data[2] << 8 | data[3]
                    if qos != 3 and size and 4 + size + (2 if qos else 0) <= n <= self.reader.max:
                        acl = self.acl()
                        rules = self._rules
                        if (
                            acl is None
                            or (
                                rules is not None
                                and rules.acl is acl
                                and rules.known(data[4 : 4 + size])
                            )
                        ) and (self.buckets is None or pay_now(self.buckets, n, now)):
                            return PASS
                elif kind != SUBSCRIBE:
                    return PASS  # PUBACK, PINGREQ, ...: nothing to judge
        try:
            packets = self.reader.feed(data)
        except RemoteProtocolError as e:
            return self._end(Reason.BAD_PACKET, f"{e.kind}: {e.detail}")
        if self.held:
            self.held.extend(packets)
            return []
        return self._send(packets, now)

    def release(self, now: float) -> Actions:
        """The held PUBLISH has waited for its tokens (taken already): it goes, then the
        rest as the buckets allow; the device is read again once nothing is held."""
        if self.ended or not self.held:
            return []
        first = self.held.popleft()
        rest = list(self.held)
        self.held.clear()
        actions: Actions = [Forward(bytes(first.raw))]
        actions += self._send(rest, now)
        if not self.held and not self.ended:
            actions.append(ResumeDevice())
        return actions

    def _send(self, packets: list[Packet] | deque[Packet], now: float) -> Actions:
        """Forward packets in order until one must wait; hold it and the rest."""
        actions: Actions = []
        out: list[bytes | memoryview] = []
        for i, packet in enumerate(packets):
            if self.ended:  # a denial ended it: what was permitted before goes nowhere
                return actions
            raw = self._permitted(packet, actions)
            if raw is None:
                continue
            wait = 0.0
            if self.buckets is not None and packet.kind == PUBLISH:
                wait = pause_for(self.buckets, len(packet.raw), now)
            if wait > 0:
                _flush(out, actions)
                if self.disconnect_over_rate:
                    actions += self._end(Reason.MESSAGE_RATE, f"over the rate by {wait:.2f}s")
                    return actions
                self.held.extend(list(packets)[i:])
                actions.append(WaitUntil(now + wait, wait))
                return actions
            out.append(raw)
        _flush(out, actions)
        return actions

    def _permitted(self, packet: Packet, actions: Actions) -> bytes | memoryview | None:
        """What of ``packet`` goes to the broker (None: nothing), by the rules in force;
        what the device is told meanwhile goes to ``actions``."""
        acl = self.acl()
        if acl is None or packet.kind not in (PUBLISH, SUBSCRIBE):
            return packet.raw
        rules = self._rules_of(acl)
        if packet.kind == PUBLISH:
            assert packet.topic is not None
            if rules.allows(WRITE, packet.topic):
                rules.remember(packet.topic.encode())
                return packet.raw
            actions.append(Denied("publish", packet.topic, rules.rule_of(WRITE, packet.topic)))
            if self.deny_action == DenyAction.DISCONNECT:
                actions += self._end(Reason.ACL_DENIED, f"PUBLISH to {packet.topic!r} denied")
                return None
            if packet.qos and packet.packet_id is not None:
                kind = Kind.PUBACK if packet.qos == 1 else Kind.PUBREC
                actions += self.send_own(ack(kind, packet.packet_id, self.level, NOT_AUTHORIZED))
            return None
        allowed = []
        refused = []
        read = READ_DELIVERED if self.deliveries else READ
        for i, sub in enumerate(packet.subscriptions):
            if rules.allows(read, sub.topic_filter):
                allowed.append((sub.topic_filter, sub.options))
            else:
                refused.append(i)
                rule = rules.rule_of(read, sub.topic_filter)
                actions.append(Denied("subscribe", sub.topic_filter, rule))
        if not refused:
            return packet.raw
        if self.deny_action == DenyAction.DISCONNECT:
            actions += self._end(Reason.ACL_DENIED, "SUBSCRIBE denied")
            return None
        assert packet.packet_id is not None
        code = NOT_AUTHORIZED if self.level == MQTT_5 else SUBACK_FAILURE_311
        if not allowed:
            actions += self.send_own(suback(packet.packet_id, [code] * len(refused), self.level))
            return None
        self._subscriptions[packet.packet_id] = (len(packet.subscriptions), tuple(refused))
        return subscribe_with(bytes(packet.raw), allowed, self.level)

    def _rules_of(self, acl: Acl) -> DeviceRules:
        """The device's rules under ``acl`` (made at the first packet, or after a reload)."""
        rules = self._rules
        if rules is None or rules.acl is not acl:
            rules = self._rules = DeviceRules(acl, self.who.username, self.who.client_id)
        return rules

    def _end(self, reason: Reason, detail: str) -> Actions:
        if self.ended:
            return []
        self.ended = True
        self.held.clear()
        code = DISCONNECT_REASONS[reason]
        if reason is Reason.BAD_PACKET and detail.startswith("too_large"):
            code = PACKET_TOO_LARGE
        return [*self._tell(code), End(reason, detail)]

    def close(self, by: Reason, server_reference: str | None = None) -> Actions:
        """The gateway is closing the session (``by``: revoked, shutdown, reload): MQTT 5
        devices get a DISCONNECT with its reason code first (``closing_reason``)."""
        self.held.clear()
        told = closing_reason(by, server_reference)
        return self._tell(*told) if told is not None else []

    def _tell(self, code: int, properties: bytes = b"\x00") -> Actions:
        if self.level != MQTT_5 or self._told:
            return []
        self._told = True
        return [*self.send_own(disconnect(MQTT_5, code, properties)), Told(code)]

    # -- broker to device --------------------------------------------------------------------

    def from_broker(self, data: bytes) -> Actions | Pass:
        """The broker's bytes to the device. Only their packet boundaries are followed
        (cheaply) so that a packet of the gateway's own goes between two of the broker's;
        while a SUBACK is to be completed they are read as packets."""
        if self.ended:
            return []
        if self.deliveries and self.acl() is not None:
            return self._from_broker_read(data)  # (every PUBLISH judged)
        n = len(data)
        if (
            self._broker.between
            and n >= 2
            and data[1] < 0x80
            and data[1] + 2 == n
            and not self.broker_reader.buffered
            and not self._subscriptions
        ):
            # One whole short packet: still at a boundary.
            return self._with_own(data) if self._own else PASS
        if self.broker_reader.buffered or (self._subscriptions and self._broker.between):
            return self._from_broker_read(data)
        try:
            self._broker.feed(data)
        except RemoteProtocolError as e:
            return self._broker_failed(e)
        if self._own and self._broker.between:
            return self._with_own(data)
        return PASS

    def _with_own(self, data: bytes | memoryview) -> Actions:
        own, self._own = self._own, []
        return [ToDevice(data), ToDevice(b"".join(own))]

    def _from_broker_read(self, data: bytes) -> Actions:
        try:
            packets = self.broker_reader.feed(data)
        except RemoteProtocolError as e:
            return self._broker_failed(e)
        out: list[bytes | memoryview] = []
        actions: Actions = []
        for packet in packets:
            if packet.kind == SUBACK and self._subscriptions:
                out.append(self._merged_suback(packet))
            elif self.deliveries and packet.kind in (PUBLISH, PUBREL):
                if self._delivered(packet, actions):
                    out.append(packet.raw)
            else:
                out.append(packet.raw)
        if out:
            actions.insert(0, ToDevice(b"".join(out)))
        if self._own and not self.broker_reader.buffered:
            own, self._own = self._own, []
            actions.append(ToDevice(b"".join(own)))
        return actions

    def _delivered(self, packet: Packet, actions: Actions) -> bool:
        """acl_read_mode = delivery: whether the broker's PUBLISH (or PUBREL) goes to the
        device. A PUBLISH the read rules deny is dropped and acknowledged to the broker as
        the device would (PUBACK; PUBREC, then PUBCOMP for its PUBREL), so the broker's
        session state stays whole; the device never learns of it."""
        if packet.kind == PUBREL:
            packet_id = ack_packet_id(bytes(packet.raw))
            if packet_id not in self._dropped:
                return True
            self._dropped.discard(packet_id)
            actions.append(Forward(ack(Kind.PUBCOMP, packet_id, self.level)))
            return False
        acl = self.acl()
        if acl is None:
            return True
        rules = self._rules_of(acl)
        topic = packet.topic or ""  # (a topic alias alone: judged as the empty topic)
        if rules.allows(READ, topic):
            return True
        actions.append(Denied("deliver", topic, rules.rule_of(READ, topic)))
        if packet.qos and packet.packet_id is not None:
            if packet.qos == 2:
                self._dropped.add(packet.packet_id)
            kind = Kind.PUBACK if packet.qos == 1 else Kind.PUBREC
            actions.append(Forward(ack(kind, packet.packet_id, self.level)))
        return False

    def _broker_failed(self, e: RemoteProtocolError) -> Actions:
        # Not MQTT as read here (a remaining length over four bytes): the session ends.
        self.ended = True
        self.held.clear()
        return [End(Reason.BAD_PACKET, f"from the broker: {e.kind}: {e.detail}")]

    def send_own(self, packet: bytes) -> Actions:
        """A packet of the gateway's own: now if the broker's stream is between packets,
        else once its current packet is through."""
        if not self._broker.between or self.broker_reader.buffered:
            self._own.append(packet)
            return []
        return [ToDevice(packet)]

    def _merged_suback(self, packet: Packet) -> bytes | memoryview:
        """The broker's SUBACK with the refused filters' codes back in their places."""
        raw = bytes(packet.raw)
        pending = self._subscriptions.pop(ack_packet_id(raw) or 0, None)
        if pending is None:
            return packet.raw
        asked, refused = pending
        code = NOT_AUTHORIZED if self.level == MQTT_5 else SUBACK_FAILURE_311
        merged = suback_refilled(raw, asked, refused, code, self.level)
        return merged if merged is not None else packet.raw  # the broker's, as it came


def _flush(out: list[bytes | memoryview], actions: Actions) -> None:
    if out:
        actions.append(Forward(b"".join(out)))
        out.clear()


# The actions are part of this module's vocabulary (the adapter and the tests name them here).
__all__ = [
    "PASS",
    "Action",
    "Actions",
    "Denied",
    "End",
    "Forward",
    "Pass",
    "PolicyEdge",
    "ResumeDevice",
    "ToDevice",
    "Told",
    "WaitUntil",
    "Who",
    "closing_reason",
]
