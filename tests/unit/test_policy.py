"""The MQTT policy edge: the sans-IO core played as conversations (bytes and time in,
actions out), and its Twisted adapter's timer and flow control under a Clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from gateway.choices import AclReadMode, DenyAction
from gateway.mqtt.acl import Acl, parse_acl
from gateway.mqtt.limits import DeviceLimits
from gateway.mqtt.policy import (
    PASS,
    Denied,
    End,
    Forward,
    PolicyEdge,
    ResumeDevice,
    ToDevice,
    Told,
    WaitUntil,
    Who,
)
from gateway.mqtt.stream import StreamReader
from gateway.proxy.policy import DevicePolicy
from gateway.reasons import Reason
from tests.unit.test_stream import publish, streams, subscribe

ACL = parse_acl("user alice\ntopic readwrite devices/alice/#\ntopic read public/#\n")


def edge(
    level: int = 4,
    limits: DeviceLimits | None = None,
    acl: Acl | None = None,
    deny: DenyAction = DenyAction.IGNORE,
    max_packet_size: int = 1000,
) -> PolicyEdge:
    return PolicyEdge(
        limits,
        lambda: acl,
        Who("alice", "c1"),
        level,
        max_packet_size,
        0.0,
        deny,
    )


def p(n: int, level: int = 4) -> bytes:
    return publish(level, "t", 0, 0, f"{n:08d}".encode())


def test_without_limits_or_rules_every_packet_passes_as_it_came() -> None:
    """Nothing to judge: each whole packet, and any split of a stream, goes on untouched
    (PASS: the adapter forwards the bytes it has, nothing is built)."""
    e = edge()
    assert e.from_device(p(1), 0.0) is PASS
    assert e.from_device(b"\xc0\x00", 0.0) is PASS  # PINGREQ
    assert e.from_broker(b"\xd0\x00") is PASS
    stream = p(2) + p(3)
    assert e.from_device(stream[:5], 0.0) == []  # a split packet: read, not yet whole
    assert e.from_device(stream[5:], 0.0) == [Forward(stream)]


def test_the_pacer_holds_what_is_over_the_rate_and_releases_it_in_order() -> None:
    """20 PUBLISHes at once at 10/s (burst 1): the first goes, the rest wait; each release
    forwards the next one and says when the one after may go; a PINGREQ waits its turn;
    the device is read again only when nothing is held."""
    e = edge(limits=DeviceLimits(messages_rate=10))
    stream = b"".join(p(n) for n in range(20)) + b"\xc0\x00"
    assert e.from_device(stream[:7], 0.0) == []
    first = e.from_device(stream[7:], 0.0)
    assert first[0] == Forward(p(0))
    assert isinstance(first[1], WaitUntil) and first[1].seconds == pytest.approx(0.1)
    assert len(first) == 2
    assert e.from_device(b"\xc0\x00", 0.0) == []  # held behind them
    now = 0.0
    for n in range(1, 19):
        now += 0.1
        actions = e.release(now)
        assert actions[0] == Forward(p(n))
        assert isinstance(actions[1], WaitUntil) and actions[1].at == pytest.approx(now + 0.1)
    last = e.release(now + 0.1)
    assert last == [Forward(p(19)), Forward(b"\xc0\x00\xc0\x00"), ResumeDevice()]


def test_a_packet_over_max_packet_size_ends_the_session_with_its_reason() -> None:
    """Announced over max_packet_size: the end (MQTT 5 told 0x95 first); nothing after."""
    e = edge(level=5)
    actions = e.from_device(bytes([0x30, 0xE8, 0x07]), 0.0)  # announces 1,003 bytes
    assert actions[:2] == [ToDevice(b"\xe0\x02\x95\x00"), Told(0x95)]
    assert isinstance(actions[2], End) and actions[2].reason is Reason.BAD_PACKET
    assert "too_large" in actions[2].detail
    assert e.from_device(p(1, 5), 0.0) == []


def test_rate_limit_action_disconnect_tells_an_mqtt5_device() -> None:
    """With rate_limit_action = disconnect, the PUBLISH over the rate ends the session:
    what went before is forwarded, the device hears 0x96, nothing more is read."""
    e = edge(level=5, limits=DeviceLimits(messages_rate=10, disconnect=True))
    publish5 = b"\x30\x05\x00\x01t\x00x"
    assert e.from_device(publish5, 0.0) is PASS
    actions = e.from_device(publish5 * 2, 0.0)
    assert actions[:2] == [ToDevice(b"\xe0\x02\x96\x00"), Told(0x96)]
    assert isinstance(actions[2], End) and actions[2].reason is Reason.MESSAGE_RATE
    assert e.from_device(publish5, 0.0) == []


@pytest.mark.parametrize("level", [4, 5])
def test_a_denied_publish_is_acknowledged_and_never_forwarded(level: int) -> None:
    """A PUBLISH the rules deny: QoS 1 acknowledged (MQTT 5 with 0x87), QoS 0 dropped;
    a permitted one passes, and once decided, passes on the fast path."""
    e = edge(level=level, acl=ACL)
    denied = publish(level, "devices/bob/x", 1, 7, b"hi")
    ack = b"\x40\x03\x00\x07\x87" if level == 5 else b"\x40\x02\x00\x07"
    rule = "default"
    assert e.from_device(denied, 0.0) == [Denied("publish", "devices/bob/x", rule), ToDevice(ack)]
    qos0 = publish(level, "devices/bob/x", 0, 0, b"hi")
    assert e.from_device(qos0, 0.0) == [Denied("publish", "devices/bob/x", rule)]
    allowed = publish(level, "devices/alice/x", 0, 0, b"hi")
    assert e.from_device(allowed, 0.0) == [Forward(allowed)]  # decided now
    assert e.from_device(allowed, 0.0) is PASS  # remembered: the fast path


def test_a_subscribe_goes_on_with_its_permitted_filters_and_the_suback_is_completed() -> None:
    """Two filters, one refused: the broker sees the permitted one; its SUBACK reaches the
    device with the refused code in its place. None permitted: the gateway answers."""
    e = edge(level=5, acl=ACL)
    asked = subscribe(5, 9, [("secret/#", 1), ("public/news", 1)])
    actions = e.from_device(asked, 0.0)
    assert actions == [
        Denied("subscribe", "secret/#", "default"),
        Forward(subscribe(5, 9, [("public/news", 1)])),
    ]
    broker_suback = b"\x90\x04\x00\x09\x00\x01"  # granted QoS 1, no properties
    assert e.from_broker(broker_suback) == [ToDevice(b"\x90\x05\x00\x09\x00\x87\x01")]
    none = subscribe(5, 10, [("secret/a", 0)])
    assert e.from_device(none, 0.0) == [
        Denied("subscribe", "secret/a", "default"),
        ToDevice(b"\x90\x04\x00\x0a\x00\x87"),
    ]


def test_deny_action_disconnect_ends_the_session() -> None:
    """acl_deny_action = disconnect: the denied PUBLISH ends the session (MQTT 5 told 0x87)."""
    e = edge(level=5, acl=ACL, deny=DenyAction.DISCONNECT)
    actions = e.from_device(publish(5, "devices/bob/x", 0, 0, b"hi"), 0.0)
    assert actions[0] == Denied("publish", "devices/bob/x", "default")
    assert actions[1:3] == [ToDevice(b"\xe0\x02\x87\x00"), Told(0x87)]
    assert isinstance(actions[3], End) and actions[3].reason is Reason.ACL_DENIED


def test_the_gateways_own_close_says_why_to_an_mqtt5_device_once() -> None:
    """Revoked, shutdown, a removed listener: MQTT 5 hears the reason once; 3.1.1 nothing."""
    e = edge(level=5)
    assert e.close(Reason.REVOKED) == [ToDevice(b"\xe0\x02\x87\x00"), Told(0x87)]
    assert e.close(Reason.SHUTDOWN) == []
    assert edge(level=5).close(Reason.RELOAD)[0] == ToDevice(b"\xe0\x02\x98\x00")
    assert edge(level=4).close(Reason.REVOKED) == []


def test_an_own_packet_waits_for_the_end_of_the_brokers_packet() -> None:
    """Mid-way through a broker packet, the gateway's DISCONNECT waits for its end."""
    e = edge(level=5)
    big = publish(5, "t", 0, 0, b"x" * 300)
    assert e.from_broker(big[:100]) is PASS
    assert e.close(Reason.SHUTDOWN) == [Told(0x8B)]  # queued, counted
    assert e.from_broker(big[100:]) == [ToDevice(big[100:]), ToDevice(b"\xe0\x02\x8b\x00")]


@settings(max_examples=300, deadline=None)
@given(streams(), st.data())
def test_the_gateways_own_packets_go_between_the_brokers(
    stream: tuple, data: st.DataObject
) -> None:
    """The broker's stream in any split, with packets of the gateway's own asked for at any
    moment: what the device reads is the broker's packets, whole and in order, with the
    gateway's between two of them."""
    level, expected, raw = stream
    e = edge(level=level, max_packet_size=1 << 20)
    out = b""

    def carry(chunk: bytes, actions: object) -> bytes:
        if actions is PASS:
            return chunk
        assert isinstance(actions, list)
        return b"".join(bytes(a.data) for a in actions if isinstance(a, ToDevice))

    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=8)))
    own = b"\xd0\x00"  # a PINGRESP stands for any packet of the gateway's
    inserted = 0
    for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True):
        out += carry(raw[a:b], e.from_broker(raw[a:b]))
        if data.draw(st.booleans()):
            out += carry(b"", e.send_own(own))
            inserted += 1
    packets = [bytes(p.raw) for p in StreamReader(level, 1 << 20, fields=False).feed(out)]
    assert [p for p in packets if p != own] == [r for _, r, *_ in expected if r != own]
    assert packets.count(own) == inserted + sum(r == own for _, r, *_ in expected)


class Device:
    def __init__(self) -> None:
        self.paused = False
        self.written: list[bytes] = []

    def write(self, data: bytes | memoryview) -> None:
        self.written.append(bytes(data))

    def pauseProducing(self) -> None:  # noqa: N802
        self.paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self.paused = False

    def stopProducing(self) -> None:  # noqa: N802
        pass


def test_the_adapter_holds_reads_for_the_wait_and_keeps_the_brokers_flow_control() -> None:
    """Under a Clock: the device is paused while a PUBLISH waits and each wait's timer
    releases the next; the broker's flow control keeps the device paused even when the
    rate would let it go; the end cancels the timer and reaches the session."""
    clock = Clock()
    device = Device()
    sent: list[bytes] = []
    ended: list[tuple[Reason, str]] = []
    e = edge(limits=DeviceLimits(messages_rate=10))
    policy = DevicePolicy(
        e, device, lambda b: sent.append(bytes(b)), lambda r, w: ended.append((r, w)), clock
    )
    stream = b"".join(p(n) for n in range(5))
    policy.feed(stream)
    assert sent == [p(0)] and device.paused
    for n in range(1, 4):
        clock.advance(0.1001)
        assert sent[-1] == p(n) and device.paused
    policy.pauseProducing()  # the broker's buffer is full
    clock.advance(0.1001)
    assert sent[-1] == p(4) and device.paused  # the rate allows, the broker does not
    policy.resumeProducing()
    assert not device.paused and not ended
    policy.feed(bytes([0x30, 0xE8, 0x07]))  # over max_packet_size
    assert ended and ended[0][0] is Reason.BAD_PACKET and not clock.getDelayedCalls()


def test_the_reason_a_close_of_the_gateways_own_gives_an_mqtt5_device() -> None:
    """0x87 revoked, 0x8B shutting down, or 0x9C with the Server Reference of a drain
    toward another server; nothing for a close that has no reason to tell."""
    from gateway.mqtt.policy import closing_reason
    from gateway.mqtt.properties import Property, decode_properties

    assert closing_reason(Reason.REVOKED) == (0x87, b"\x00")
    assert closing_reason(Reason.SHUTDOWN) == (0x8B, b"\x00")
    assert closing_reason(Reason.REVOKED, "b.example:8883") == (0x87, b"\x00")
    code, props = closing_reason(Reason.SHUTDOWN, "b.example:8883") or (0, b"")
    assert code == 0x9C
    decoded, _ = decode_properties(props, 0)
    assert decoded == [(Property.SERVER_REFERENCE, "b.example:8883")]
    assert closing_reason(Reason.BAD_CONNECT) is None


def test_an_mqtt5_session_on_the_short_path_is_told_why_between_the_brokers_packets() -> None:
    """``BrokerFollower``: the DISCONNECT goes to the device only where the broker's stream
    is between two packets (never inside one); a stream that is not MQTT stops it."""
    from gateway.proxy.policy import BrokerFollower

    class Device:
        def __init__(self) -> None:
            self.written: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.written.append(data)

    pub = publish(5, "t", 0, 0, b"x" * 200)
    device = Device()
    follower = BrokerFollower(device)
    follower.feed(pub[:100])
    follower.close(Reason.REVOKED)
    assert device.written == []  # inside a packet: nothing
    follower.feed(pub[100:] + pub)
    follower.close(Reason.REVOKED)
    assert device.written == [b"\xe0\x02\x87\x00"]
    broken = BrokerFollower(device)
    broken.feed(b"\x30\xff\xff\xff\xff\xff")  # a five-byte length: not MQTT
    broken.close(Reason.REVOKED)
    assert device.written == [b"\xe0\x02\x87\x00"]


@pytest.mark.parametrize("level", [4, 5])
def test_read_rules_judged_per_delivery_grant_what_mosquitto_grants_and_drop_the_rest(
    level: int,
) -> None:
    """acl_read_mode = delivery: `#` is granted despite a deny line (filter mode refuses
    it); each PUBLISH the broker delivers is judged, a denied one dropped and acknowledged
    to the broker on the device's behalf (QoS 1: PUBACK; QoS 2: PUBREC, then PUBCOMP for
    its PUBREL, which the device never sees); the others reach the device in order."""
    rules = parse_acl("topic readwrite #\ntopic deny secret/#\n")
    strict = edge(level=level, acl=rules)
    assert strict.from_device(subscribe(level, 1, [("#", 1)]), 0.0)[0] == Denied(
        "subscribe", "#", "line 2"
    )
    e = PolicyEdge(
        None, lambda: rules, Who("alice", "c1"), level, 1000, 0.0, read_mode=AclReadMode.DELIVERY
    )
    asked = subscribe(level, 1, [("#", 1)])
    assert e.from_device(asked, 0.0) in (PASS, [Forward(asked)])  # granted whole
    ok, hidden1 = publish(level, "news", 1, 7, b"a"), publish(level, "secret/x", 1, 8, b"b")
    hidden2, ok0 = publish(level, "secret/y", 2, 9, b"c"), publish(level, "news", 0, 0, b"d")
    actions = e.from_broker(ok + hidden1 + hidden2 + ok0)
    acks = [a for a in actions if isinstance(a, Forward)]
    assert [a for a in actions if isinstance(a, ToDevice)] == [ToDevice(ok + ok0)]
    code = b"\x00" if level == 5 else b""  # (MQTT 5 acks carry a reason code)
    size = bytes([2 + len(code)])
    assert acks == [
        Forward(b"\x40" + size + b"\x00\x08" + code),  # PUBACK
        Forward(b"\x50" + size + b"\x00\x09" + code),  # PUBREC
    ]
    assert Denied("deliver", "secret/x", "line 2") in actions
    # The broker's PUBREL of the dropped QoS 2 message: answered, not passed on.
    assert e.from_broker(b"\x62\x02\x00\x09") == [Forward(b"\x70" + size + b"\x00\x09" + code)]
    assert e.from_broker(b"\x62\x02\x00\x07") == [ToDevice(b"\x62\x02\x00\x07")]
