"""The MQTT stream reader (after the CONNECT): any split of a valid stream gives the same
packets; any bytes give packets or its one error; the size bound holds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mqtt.errors import RemoteProtocolError
from gateway.mqtt.packets import encode_length
from gateway.mqtt.stream import PUBLISH, SUBSCRIBE, StreamReader, Subscription

topics = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00+#"),
    min_size=1,
    max_size=30,
)


def utf8(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def publish(level: int, topic: str, qos: int, pid: int, payload: bytes) -> bytes:
    body = utf8(topic) + (pid.to_bytes(2, "big") if qos else b"")
    if level == 5:
        body += b"\x00"
    body += payload
    return bytes([0x30 | qos << 1]) + encode_length(len(body)) + body


def subscribe(level: int, pid: int, filters: list[tuple[str, int]]) -> bytes:
    body = pid.to_bytes(2, "big") + (b"\x00" if level == 5 else b"")
    for f, opts in filters:
        body += utf8(f) + bytes([opts])
    return b"\x82" + encode_length(len(body)) + body


@st.composite
def streams(draw: st.DrawFn) -> tuple[int, list[tuple], bytes]:
    level = draw(st.sampled_from([3, 4, 5]))
    expected: list[tuple] = []
    data = b""
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["publish", "subscribe", "ping", "puback", "disconnect"]))
        if kind == "publish":
            topic = draw(topics)
            qos = draw(st.integers(0, 2))
            pid = draw(st.integers(1, 65535))
            payload = draw(st.binary(max_size=300))
            raw = publish(level, topic, qos, pid, payload)
            expected.append((PUBLISH, raw, topic, qos, pid if qos else None, len(payload), ()))
        elif kind == "subscribe":
            pid = draw(st.integers(1, 65535))
            filters = draw(st.lists(st.tuples(topics, st.integers(0, 2)), min_size=1, max_size=4))
            raw = subscribe(level, pid, filters)
            subs = tuple(Subscription(f, o) for f, o in filters)
            expected.append((SUBSCRIBE, raw, None, 0, pid, 0, subs))
        else:
            raw = {"ping": b"\xc0\x00", "puback": b"\x40\x02\x00\x07", "disconnect": b"\xe0\x00"}[
                kind
            ]
            expected.append((raw[0] >> 4, raw, None, 0, None, 0, ()))
        data += raw
    return level, expected, data


def read(reader: StreamReader, chunks: list[bytes]) -> list[tuple]:
    out = []
    for chunk in chunks:
        for p in reader.feed(chunk):
            out.append(
                (p.kind, bytes(p.raw), p.topic, p.qos, p.packet_id, p.payload_size, p.subscriptions)
            )
    return out


@settings(max_examples=300, deadline=None)
@given(streams(), st.data())
def test_any_split_gives_the_same_packets(stream: tuple, data: st.DataObject) -> None:
    level, expected, raw = stream
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=10)))
    chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    assert read(StreamReader(level, 1 << 20), chunks) == expected
    one_by_one = [raw[i : i + 1] for i in range(len(raw))]
    reader = StreamReader(level, 1 << 20)
    assert read(reader, one_by_one) == expected
    assert reader.buffered == 0
    # The broker's direction: boundaries only.
    bare = read(StreamReader(level, 1 << 20, fields=False), chunks)
    assert [(k, r) for k, r, *_ in bare] == [(k, r) for k, r, *_ in expected]


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([4, 5]), st.binary(max_size=400), st.data())
def test_any_bytes_give_packets_or_the_one_error(
    level: int, raw: bytes, data: st.DataObject
) -> None:
    reader = StreamReader(level, 256)
    cut = data.draw(st.integers(0, len(raw)))
    try:
        for chunk in (raw[:cut], raw[cut:]):
            for p in reader.feed(chunk):
                assert len(p.raw) <= 256
    except RemoteProtocolError:
        pass


def test_a_packet_over_the_size_limit_is_refused_when_its_length_is_known() -> None:
    reader = StreamReader(4, 100)
    big = publish(4, "t", 0, 0, b"x" * 200)
    with pytest.raises(RemoteProtocolError) as refused:
        reader.feed(big[:3])  # the header alone
    assert refused.value.kind == "too_large"


def test_malformed_publish_and_subscribe_are_refused() -> None:
    for level, raw in [
        (4, b"\x36\x05\x00\x01t\x00\x01"),  # QoS 3
        (4, b"\x30\x02\x00\x00"),  # empty topic in 3.1.1
        (4, publish(4, "a/+", 0, 0, b"")),  # a wildcard in a PUBLISH topic
        (4, b"\x80\x05\x00\x01\x00\x01a"),  # SUBSCRIBE with flags 0000
        (4, b"\x82\x02\x00\x01"),  # SUBSCRIBE without a filter
        (5, b"\x32\x06\x00\x01t\x00\x00\x00"),  # packet id 0
    ]:
        with pytest.raises(RemoteProtocolError):
            StreamReader(level, 1000).feed(raw)
