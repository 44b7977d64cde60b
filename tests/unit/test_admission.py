"""Admission before TLS: token buckets, per-address caps and rates, and the log that stays
readable under a flood. Deterministic: Twisted's Clock drives time."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs

from gateway import testing as support
from gateway.proxy.admission import Admission, RefusalLog, TokenBucket, address_key
from tests.unit.tlsloop import Listener


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> support.Pki:
    return support.make_pki(str(tmp_path_factory.mktemp("pki")))


def test_token_bucket_with_clock() -> None:
    """Starts full (a burst of ``burst`` passes), then refills at ``rate`` per second, never
    beyond ``burst``; a clock stepping back refills nothing."""
    clock = Clock()
    bucket = TokenBucket(rate=5, burst=5, now=clock.seconds())
    taken = 0
    while bucket.ready(clock.seconds()):
        bucket.take()
        taken += 1
    assert taken == 5
    clock.advance(0.1)  # half a token
    assert not bucket.ready(clock.seconds())
    clock.advance(0.1)
    assert bucket.ready(clock.seconds())
    bucket.take()
    clock.advance(3600)
    assert bucket.refill(clock.seconds()) == 5  # capped at the burst
    assert bucket.refill(clock.seconds() - 10) == 5  # time going back: no change, no error


def test_rate_limit_spreads_over_time() -> None:
    """200 attempts per second for 5 s against max_conn_rate = 50: the first second passes
    the burst (50) plus that second's refill (50), then 50 a second."""
    clock = Clock()
    admission = Admission(100000, 0, max_conn_rate=50, now=clock.seconds())
    admitted = []
    for second in range(5):
        count = 0
        for _ in range(200):
            if admission.admit(f"10.0.0.{second}", clock.seconds()) is None:
                count += 1
                admission.release(f"10.0.0.{second}")
            clock.advance(1 / 200)
        admitted.append(count)
    assert 99 <= admitted[0] <= 100, admitted
    assert all(49 <= n <= 51 for n in admitted[1:]), admitted


def test_per_address_rate_leaves_other_addresses_alone() -> None:
    """One address above max_conn_rate_per_ip is cut; another one is not, and the refused
    flood takes no listener token (a token is taken only for an admitted connection)."""
    clock = Clock()
    admission = Admission(100000, 0, max_conn_rate=30, max_conn_rate_per_ip=10)
    reasons = [admission.admit("198.51.100.1", clock.seconds()) for _ in range(100)]
    assert reasons.count(None) == 10
    assert set(reasons[10:]) == {"rate_limited_per_ip"}
    assert [admission.admit("198.51.100.2", clock.seconds()) for _ in range(10)] == [None] * 10
    # 20 of 30 listener tokens were taken: the next address gets the last 10, then the
    # listener-wide limit speaks.
    third = [admission.admit("198.51.100.3", clock.seconds()) for _ in range(11)]
    assert third[:10] == [None] * 10 and third[10] == "rate_limited_per_ip"
    assert admission.admit("198.51.100.4", clock.seconds()) == "rate_limited"


def test_concurrent_caps_are_released() -> None:
    admission = Admission(3, max_connections_per_ip=2)
    assert admission.admit("a", 0) is None and admission.admit("a", 0) is None
    assert admission.admit("a", 0) == "too_many_connections_per_ip"
    assert admission.admit("b", 0) is None
    assert admission.admit("c", 0) == "too_many_connections"
    admission.release("a")
    assert admission.admit("a", 0) is None
    for key in ("a", "a", "b"):
        admission.release(key)
    assert admission.active == 0 and not admission.per_ip  # nothing left behind


def test_per_address_buckets_are_forgotten_when_full_again() -> None:
    admission = Admission(100000, 0, max_conn_rate_per_ip=5)
    for i in range(100):
        assert admission.admit(f"192.0.2.{i}", 0.0) is None
    assert len(admission.buckets) == 100
    admission.prune(0.5)  # each bucket lost one of 5 tokens: 0.5 s refills 2.5
    assert len(admission.buckets) == 0


@pytest.mark.parametrize(
    "host, key",
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_address_key(host: str, key: str) -> None:
    """An IPv6 client counts by its /64: an address per connection walks around nothing."""
    assert address_key(host) == key


def test_refusal_log_threshold_and_summary() -> None:
    log = RefusalLog(individual=3)
    assert [log.note("rate_limited", "a") for _ in range(5)] == [True] * 3 + [False] * 2
    log.note("too_many_connections_per_ip", "b")
    text = log.summary()
    assert text is not None
    assert text.startswith("3 more connections refused before TLS")
    assert "rate_limited=2" in text and "too_many_connections_per_ip=1" in text
    assert "from 2 address(es); most: a (2), b (1)" in text
    assert log.summary() is None  # a new interval
    assert log.note("rate_limited", "a") is True


def test_factory_refuses_before_tls_and_summarises(p: support.Pki) -> None:
    """Through the listener's factory: refused connections get no protocol (no TLS object
    at all), the first 10 of an interval are logged, then one summary line."""
    listener = Listener.make(p, max_conn_rate_per_ip="5", max_connections_per_ip="3")
    addr = IPv4Address("TCP", "203.0.113.9", 40000)
    with capturedLogs() as events:
        built = [listener.factory.buildProtocol(addr) for _ in range(3)]
        for proto in built:
            proto.makeConnection(StringTransport())
        assert all(proto is not None for proto in built)
        assert [listener.factory.buildProtocol(addr) for _ in range(30)] == [None] * 30
        other = listener.factory.buildProtocol(IPv6Address("TCP", "2001:db8::1", 40001))
        assert other is not None
        lines = [e["log_format"] for e in events if "refused" in e.get("log_format", "")]
        assert len(lines) == 10
        assert listener.stats.refused == {"too_many_connections_per_ip": 30}
        built[0].connectionLost(None)  # its slot is released
        listener.reactor.advance(1)
        assert listener.factory.buildProtocol(addr) is not None
        listener.reactor.advance(10)  # the interval ends: one summary line
    summaries = [e for e in events if "in the last" in e.get("log_format", "")]
    assert len(summaries) == 1
    assert (
        "20 more connections refused before TLS (too_many_connections_per_ip=20)"
        in (summaries[0]["summary"])
    )
    assert "203.0.113.9 (20)" in summaries[0]["summary"]
