"""The policy edge's rates and token buckets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mqtt.limits import Bucket, DeviceLimits, parse_rate, pause_for


def test_rates_in_emqx_notation() -> None:
    assert parse_rate("100/s", sized=False) == 100
    assert parse_rate("10000/60m", sized=False) == pytest.approx(10000 / 3600)
    assert parse_rate("1MB/s", sized=True) == 1024**2
    assert parse_rate("512kb/10s", sized=True) == pytest.approx(512 * 1024 / 10)
    for bad, sized in [("1MB/s", False), ("fast", False), ("0/s", False), ("10/y", True)]:
        with pytest.raises(ValueError):
            parse_rate(bad, sized)


def test_a_bucket_paces_to_its_rate_after_its_burst() -> None:
    bucket = Bucket(rate=10, burst=5, at=0.0)
    waits = [bucket.take(1, 0.0) for _ in range(5)]
    assert waits == [0.0] * 5  # the burst
    assert bucket.take(1, 0.0) == pytest.approx(0.1)  # then one token per 100 ms
    assert bucket.take(1, 0.1) == pytest.approx(0.1)
    assert bucket.take(1, 10.0) == 0.0  # refilled, capped at the burst
    assert bucket.tokens == pytest.approx(4)


@settings(max_examples=300, deadline=None)
@given(
    st.floats(1, 1000),
    st.floats(1, 100),
    st.lists(st.floats(0, 0.5), min_size=1, max_size=200),
)
def test_a_device_that_waits_as_told_never_exceeds_rate_plus_burst(
    rate: float, burst: float, gaps: list[float]
) -> None:
    """Whatever its pace, the broker gets at most burst + rate * t messages in t seconds:
    a message that finds the bucket short is forwarded once its wait is over (and nothing
    more is read from the device meanwhile)."""
    limits = DeviceLimits(messages_rate=rate, messages_burst=burst)
    buckets = limits.buckets(0.0)
    now = 0.0
    sent = 0
    for gap in gaps:
        now += gap
        wait = pause_for(buckets, 64, now)
        now += wait  # forwarded then; the next one is read after that
        sent += 1
        assert sent <= max(burst, 1.0) + rate * now + 1e-6


class Device:
    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0

    def pauseProducing(self) -> None:  # noqa: N802
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:  # noqa: N802
        self.paused = False

    def stopProducing(self) -> None:  # noqa: N802
        pass


def _publish(n: int) -> bytes:
    payload = f"{n:08d}".encode()
    body = b"\x00\x01t" + payload
    return bytes([0x30, len(body)]) + body


def test_the_pacer_holds_reads_and_forwards_in_order_at_the_rate() -> None:
    """20 PUBLISHes at once at 10/s (burst 1): one goes at once, the others one every
    100 ms, in order, none lost; the device is not read from meanwhile; the broker's flow
    control keeps it paused even when the rate would let it go; a PINGREQ waits its turn."""
    from twisted.internet.task import Clock

    from gateway.proxy.policy import DevicePolicy, Who

    clock = Clock()
    device = Device()
    sent: list[bytes] = []
    refused: list[str] = []
    pacer = DevicePolicy(
        device,
        sent.append,
        lambda reason, why: refused.append(why),
        DeviceLimits(messages_rate=10),
        lambda: None,
        Who("u", "c"),
        4,
        1000,
        clock,
    )
    stream = b"".join(_publish(n) for n in range(20)) + b"\xc0\x00"
    pacer.feed(stream[:7])  # split anywhere
    pacer.feed(stream[7:])
    assert b"".join(sent) == _publish(0) and device.paused
    for i in range(1, 19):
        clock.advance(0.1001)
        assert b"".join(sent) == b"".join(_publish(n) for n in range(i + 1))
        assert device.paused
    pacer.pauseProducing()  # the broker's buffer is full
    clock.advance(0.1001)
    assert b"".join(sent) == stream  # the last PUBLISH, then the PINGREQ
    assert device.paused  # still: the broker has not drained
    pacer.resumeProducing()
    assert not device.paused and not refused
    pacer.feed(bytes([0x30, 0xE8, 0x07]))  # announces 1,003 bytes: over max_packet_size
    assert refused and "too_large" in refused[0]


class Written(Device):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


def test_rate_limit_action_disconnect_tells_an_mqtt5_device() -> None:
    from twisted.internet.task import Clock

    from gateway.proxy.policy import DevicePolicy, Who

    clock = Clock()
    device = Written()
    sent: list[bytes] = []
    ended: list[tuple[str, str]] = []
    policy = DevicePolicy(
        device,
        sent.append,
        lambda reason, why: ended.append((reason, why)),
        DeviceLimits(messages_rate=10, disconnect=True),
        lambda: None,
        Who("u", "c"),
        5,
        1000,
        clock,
    )
    publish5 = b"\x30\x05\x00\x01t\x00x"  # MQTT 5: an empty properties length, then payload
    policy.feed(publish5 * 3)
    assert sent == [publish5]  # the first passes, the second is over the rate
    assert device.written == [b"\xe0\x02\x96\x00"] and ended[0][0] == "message_rate"
    policy.feed(publish5)  # nothing more after the end
    assert sent == [publish5]


def test_the_gateways_own_close_says_why_to_an_mqtt5_device() -> None:
    """A revoked certificate's session (or a shutdown, a listener removed) gets its MQTT 5
    reason before the close, once; an MQTT 3.1.1 one is closed as it always was."""
    from twisted.internet.task import Clock

    from gateway.proxy.policy import DevicePolicy, Who

    for level, expected in ((5, [b"\xe0\x02\x87\x00"]), (4, [])):
        device = Written()
        policy = DevicePolicy(
            device,
            lambda b: None,
            lambda r, w: None,
            None,
            lambda: None,
            Who("u", "c"),
            level,
            1000,
            Clock(),
        )
        policy.disconnect("revoked")
        policy.disconnect("shutdown")  # once only
        assert device.written == expected
