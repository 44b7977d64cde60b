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


@settings(max_examples=300, deadline=None)
@given(
    st.floats(1, 1000),
    st.floats(1, 100),
    st.floats(100, 1e6),
    st.lists(st.tuples(st.floats(0, 0.2), st.integers(2, 5000)), min_size=1, max_size=100),
)
def test_pay_now_takes_only_what_every_bucket_has(
    rate: float, burst: float, byte_rate: float, steps: list[tuple[float, int]]
) -> None:
    """The fast path's ``pay_now``: a PUBLISH is charged to both buckets exactly as
    ``Bucket.level`` says they stand, and only if both can pay; otherwise nothing is taken
    (the general path holds the packet and ``pause_for`` charges it)."""
    from gateway.mqtt.limits import pay_now

    buckets = DeviceLimits(rate, burst, byte_rate, byte_rate).buckets(0.0)
    messages, sizes = buckets
    assert messages is not None and sizes is not None
    now = 0.0
    for gap, size in steps:
        now += gap
        m, s = messages.level(now), sizes.level(now)
        before = (messages.tokens, messages.at, sizes.tokens, sizes.at)
        if pay_now(buckets, size, now):
            assert m >= 1 and s >= size
            assert messages.tokens == pytest.approx(m - 1) and messages.at == now
            assert sizes.tokens == pytest.approx(s - size) and sizes.at == now
        else:
            assert m < 1 or s < size
            assert (messages.tokens, messages.at, sizes.tokens, sizes.at) == before
