"""The broker side's sans-IO cores: the broker pool, the CONNECT rewriter (hypothesis), the
certificate identities, and the PROXY protocol (the specification's examples, round trips,
hostile input)."""

from __future__ import annotations

import struct
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import mqtt
from gateway import testing as support
from gateway.demo import pki
from gateway.mqtt.rewrite import rewrite_connect
from gateway.proxy import proxyproto as pp
from gateway.proxy.identity import identity_of
from gateway.proxy.pool import BrokerPool
from tests.unit.test_codec_properties import Spec, run, specs

BROKERS = (("10.0.0.1", 1883), ("10.0.0.2", 1883), ("10.0.0.3", 1883))


# -- the pool ------------------------------------------------------------------------------


def test_round_robin_and_least_conn_spread() -> None:
    rr = BrokerPool(BROKERS, "round_robin")
    firsts = [rr.candidates("x", 0)[0].index for _ in range(30)]
    assert Counter(firsts) == {0: 10, 1: 10, 2: 10}
    lc = BrokerPool(BROKERS, "least_conn")
    for _ in range(30):
        lc.connected(lc.candidates("x", 0)[0])
    assert [b.active for b in lc.brokers] == [10, 10, 10]
    lc.released(lc.brokers[1])
    lc.released(lc.brokers[1])
    assert lc.candidates("x", 0)[0].index == 1  # the one with fewest sessions


def test_client_id_is_sticky_and_moves_about_one_in_n() -> None:
    ids = [f"device-{i}" for i in range(3000)]
    three = BrokerPool(BROKERS, "client_id")
    before = {c: three.candidates(c, 0)[0].name for c in ids}
    assert before == {c: three.candidates(c, 0)[0].name for c in ids}  # stable
    spread = Counter(before.values())
    assert all(800 < n < 1200 for n in spread.values()), spread
    four = BrokerPool(BROKERS + (("10.0.0.4", 1883),), "client_id")
    after = {c: four.candidates(c, 0)[0].name for c in ids}
    moved = [c for c in ids if before[c] != after[c]]
    assert all(after[c] == "10.0.0.4:1883" for c in moved)  # only to the new broker
    assert 0.18 < len(moved) / len(ids) < 0.32  # about a quarter, not all


def test_down_brokers_go_last_and_come_back() -> None:
    changes: list[tuple[str, bool, str]] = []
    pool = BrokerPool(
        BROKERS,
        "round_robin",
        down_time=10,
        on_change=lambda b, w: changes.append((b.name, b.up, w)),
    )
    pool.failed(pool.brokers[0], now=100, error="connection refused")
    for _ in range(6):
        assert pool.candidates("x", 105)[-1].index == 0  # tried last while down
    assert pool.candidates("x", 111)[0].index in (0, 1, 2)  # its down time is over
    pool.check_ok(pool.brokers[0])
    assert changes == [
        ("10.0.0.1:1883", False, "connection refused"),
        ("10.0.0.1:1883", True, "health check passed"),
    ]
    for b in pool.brokers:
        pool.failed(b, now=200, error="down")
    assert len(pool.candidates("x", 201)) == 3  # all down: still every broker, in order


# -- identities and the CONNECT rewrite ----------------------------------------------------


@pytest.fixture(scope="module")
def device() -> pki.Issued:
    ca = pki.make_ca("identity CA")
    return pki.issue(ca, "alice")


def test_identity_values(device: pki.Issued) -> None:
    import base64
    import hashlib

    from cryptography.hazmat.primitives import serialization

    der = device.cert.public_bytes(serialization.Encoding.DER)
    assert identity_of(device.cert, "cn") == "alice"
    assert identity_of(device.cert, "dn") == "CN=alice,O=mqttgw test"
    assert identity_of(device.cert, "crt") == base64.b64encode(der).decode()
    assert identity_of(device.cert, "pem").startswith("-----BEGIN CERTIFICATE-----")
    assert identity_of(device.cert, "md5") == hashlib.md5(der).hexdigest()


def test_rewrite_sets_username_for_each_version() -> None:
    for level in (mqtt.MQTT_3_1, mqtt.MQTT_3_1_1, mqtt.MQTT_5):
        spec = Spec(level, "dev", True, 30, ("w/t", b"bye", 1, True, b""), None, None, b"")
        out = rewrite_connect(spec.encode(), username="alice", client_id="alice-id")
        kind, (connect, _) = run([out])
        assert kind == "connect"
        assert connect.has_username and connect.client_id == "alice-id"
        assert out.endswith(b"\x00\x05alice")  # the user name, last (no password)


@settings(max_examples=300, deadline=None)
@given(
    specs(),
    st.one_of(st.none(), st.text(max_size=30).filter(lambda t: "\x00" not in t)),
    st.one_of(st.none(), st.text(max_size=30).filter(lambda t: "\x00" not in t)),
)
def test_rewrite_keeps_every_other_field(
    spec: Spec, username: str | None, client_id: str | None
) -> None:
    """For any valid CONNECT, the rewritten packet parses, has the new user name / client id,
    and keeps every other field equal (will, properties and password byte for byte)."""
    try:
        out = rewrite_connect(spec.encode(), username, client_id)
    except ValueError:
        return  # a value that cannot be encoded (surrogates): refused, not mangled
    kind, value = run([out], max_size=1 << 20)
    assert kind == "connect", value
    connect, _ = value
    expected = Spec(
        spec.level,
        spec.client_id if client_id is None else client_id,
        spec.clean_start,
        spec.keep_alive,
        spec.will,
        spec.username if username is None else username,
        spec.password,
        spec.properties,
    )
    assert out == expected.encode()  # the very bytes of the packet built with those values


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_rewrite_refuses_garbage_cleanly(data: bytes) -> None:
    packet = bytes([0x10]) + support.encode_length(len(data)) + data
    try:
        rewrite_connect(packet, username="u")
    except mqtt.RemoteProtocolError:
        pass


# -- PROXY protocol ------------------------------------------------------------------------


def test_v1_header_as_in_the_specification() -> None:
    assert (
        pp.header_v1(("192.168.0.1", 56324), ("192.168.0.11", 443))
        == b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    )
    assert pp.header_v1(("2001:db8::1", 1), ("2001:db8::2", 2)) == (
        b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n"
    )
    assert pp.header_v1(("192.168.0.1", 1), ("2001:db8::2", 2)) == b"PROXY UNKNOWN\r\n"


def test_v2_header_layout() -> None:
    tls = pp.TlsFacts("TLSv1.3", "TLS_AES_128_GCM_SHA256", True, True, "alice")
    h = pp.header_v2(("192.168.0.1", 56324), ("192.168.0.11", 443), tls)
    assert h[:12] == b"\r\n\r\n\x00\r\nQUIT\n"
    assert h[12] == 0x21 and h[13] == 0x11  # version 2, PROXY; AF_INET, STREAM
    (length,) = struct.unpack("!H", h[14:16])
    assert len(h) == 16 + length
    assert h[16:28] == bytes([192, 168, 0, 1, 192, 168, 0, 11]) + struct.pack("!HH", 56324, 443)
    reader = pp.HeaderReader()
    result = reader.feed(h + b"rest")
    assert result is not None and result.source == ("192.168.0.1", 56324)
    assert reader.rest == b"rest"
    ((kind, value),) = result.tlvs
    assert kind == pp.PP2_TYPE_SSL
    assert support.parse_ssl_tlv(value) == {
        "client": pp.PP2_CLIENT_SSL | pp.PP2_CLIENT_CERT_CONN,
        "verify": 0,
        "version": "TLSv1.3",
        "cipher": "TLS_AES_128_GCM_SHA256",
        "cn": "alice",
    }


@pytest.mark.parametrize(
    "header, source",
    [
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 8883\r\n", ("203.0.113.7", 40000)),
        (pp.header_v2(("2001:db8::7", 5), ("2001:db8::1", 8883)), ("2001:db8::7", 5)),
    ],
)
def test_reader_byte_by_byte(header: bytes, source: tuple[str, int]) -> None:
    reader = pp.HeaderReader()
    result = None
    for i in range(len(header)):
        result = reader.feed(header[i : i + 1])
        if i < len(header) - 1:
            assert result is None
    assert result is not None and result.source == source


@pytest.mark.parametrize(
    "data, error",
    [
        (b"\x16\x03\x01\x02\x00", "not a PROXY protocol header"),  # a TLS ClientHello
        (b"GET / HTTP/1.1\r\n", "not a PROXY protocol header"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n", "PROXY v1"),
        (b"PROXY TCP4 " + b"1" * 120, "longer than 107"),
        (pp.V2_SIGNATURE + b"\x21\x11\xff\xff", "bytes of addresses"),
        (pp.V2_SIGNATURE + b"\x31\x11\x00\x00", "version 3"),
    ],
)
def test_reader_refuses(data: bytes, error: str) -> None:
    with pytest.raises(pp.ProxyHeaderError) as info:
        pp.HeaderReader().feed(data)
    assert error in info.value.detail


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_reader_on_any_bytes(data: bytes) -> None:
    """Any input ends in a result, a need for more, or the reader's own error."""
    reader = pp.HeaderReader()
    try:
        reader.feed(data)
    except pp.ProxyHeaderError:
        pass
