"""The one MQTT encoder (CONNECT, CONNACK) and the CONNACK reader of the health check."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import mqtt
from gateway.mqtt import packets, properties
from gateway.mqtt.packets import Boundaries, encode_length, read_connack


@pytest.mark.parametrize("size", [0, 1, 115, 116, 200, 243, 244, 16_383, 16_384, 65_535])
def test_connect_of_any_client_id_parses_back(size: int) -> None:
    """A CONNECT with a client id of any length MQTT allows is read back whole: the
    remaining length takes as many bytes as it needs (116 and 244 bytes broke a one-byte
    length)."""
    client_id = "c" * size
    for level in (mqtt.MQTT_3_1_1, mqtt.MQTT_5):
        reader = mqtt.ConnectReader(1 << 20)
        reader.receive_data(mqtt.connect_packet(client_id, level=level))
        event = reader.next_event()
        assert isinstance(event, mqtt.Connect)
        assert event.client_id == client_id and event.protocol_level == level


def test_connect_refuses_what_mqtt_cannot_carry() -> None:
    """A client id over 65,535 bytes, or with U+0000, is a ValueError, never a bad packet."""
    with pytest.raises(ValueError, match="does not fit"):
        mqtt.connect_packet("c" * 65_536)
    with pytest.raises(ValueError, match="U\\+0000"):
        mqtt.connect_packet("a\x00b")
    with pytest.raises(ValueError, match="four bytes"):
        encode_length(268_435_456)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", None),
        (b"\x20", None),
        (b"\x20\x02\x00", None),
        (b"\x20\x02\x00\x00", mqtt.Connack(False, 0)),
        (b"\x20\x02\x01\x05", mqtt.Connack(True, 5)),
        (b"\x20\x03\x00\x87\x00", mqtt.Connack(False, 0x87)),  # MQTT 5, no properties
        (b"\x20\x82\x01\x00\x00", mqtt.Connack(False, 0)),  # a two-byte remaining length
    ],
)
def test_connack_reader(data: bytes, expected: mqtt.Connack | None) -> None:
    """A CONNACK is read once its first two body bytes are in, in either dialect."""
    assert read_connack(data) == expected


@pytest.mark.parametrize("data", [b"\x30\x02\x00\x00", b"\x20\x00", b"\x20\xff\xff\xff\xff\x01"])
def test_connack_reader_refuses_what_is_not_one(data: bytes) -> None:
    """Another packet, a too-short or an over-long CONNACK is a protocol error."""
    with pytest.raises(mqtt.RemoteProtocolError):
        read_connack(data)


@given(st.binary(max_size=64))
def test_connack_reader_on_any_bytes(data: bytes) -> None:
    """Any bytes give a CONNACK, None (need more) or the one error; nothing else."""
    try:
        result = read_connack(data)
    except mqtt.RemoteProtocolError:
        return
    assert result is None or isinstance(result, mqtt.Connack)


# -- the one variable byte integer, and MQTT 5 properties ----------------------------------


@given(st.integers(0, packets.MAX_REMAINING))
def test_varint_round_trip(n: int) -> None:
    """Every length MQTT can carry encodes in one to four bytes and decodes back, whole
    or fed short (None until the last byte)."""
    raw = packets.encode_length(n)
    assert 1 <= len(raw) <= 4
    assert packets.decode_varint(raw, 0, len(raw)) == (n, len(raw))
    assert packets.decode_varint(raw + b"\xff", 0, len(raw) + 1) == (n, len(raw))
    for short in range(len(raw)):
        assert packets.decode_varint(raw, 0, short) is None


@given(st.binary(max_size=8), st.integers(0, 8))
def test_varint_on_any_bytes(data: bytes, pos: int) -> None:
    """Any bytes give a value with its end, None (more to come) or the one error."""
    try:
        decoded = packets.decode_varint(data, pos, len(data))
    except mqtt.RemoteProtocolError as e:
        assert e.kind == "malformed" and "four bytes" in e.detail
        assert all(b & 0x80 for b in data[pos : pos + 4])
        return
    if decoded is None:  # every byte there says more follows, and fewer than four are there
        assert all(b & 0x80 for b in data[pos:]) and len(data[pos:]) < 4
        return
    value, end = decoded
    assert pos < end <= pos + 4 and not data[end - 1] & 0x80
    assert all(b & 0x80 for b in data[pos : end - 1])
    assert value <= packets.MAX_REMAINING
    assert packets.decode_varint(packets.encode_length(value), 0, 4) is not None


def test_over_four_length_bytes_is_malformed() -> None:
    """A fifth length byte is refused at once, however much follows."""
    with pytest.raises(mqtt.RemoteProtocolError, match="four bytes"):
        packets.decode_varint(b"\xff\xff\xff\xff\x01", 0, 5)
    assert packets.fixed_header(b"\x30\x80\x01", 0, 3) == (3, 128)


_VALUES = {
    properties.Value.BYTE: st.integers(0, 0xFF),
    properties.Value.TWO: st.integers(0, 0xFFFF),
    properties.Value.FOUR: st.integers(0, 0xFFFFFFFF),
    properties.Value.VARINT: st.integers(0, packets.MAX_REMAINING),
    properties.Value.UTF8: st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
        max_size=40,
    ),
    properties.Value.BINARY: st.binary(max_size=40),
}
_VALUES[properties.Value.PAIR] = st.tuples(
    _VALUES[properties.Value.UTF8], _VALUES[properties.Value.UTF8]
)
property_lists = st.lists(
    st.sampled_from(list(properties.Property)).flatmap(
        lambda key: st.tuples(st.just(key), _VALUES[properties.TYPES[key]])
    ),
    max_size=6,
)


@given(property_lists)
def test_properties_round_trip(props: list) -> None:
    """MQTT 5 properties of every form encode and decode back, in order."""
    raw = properties.encode_properties(props)
    assert properties.decode_properties(raw, 0) == (props, len(raw))


@given(st.binary(max_size=64))
def test_properties_on_any_bytes(data: bytes) -> None:
    """Any bytes give properties within their length, or the one error."""
    try:
        props, end = properties.decode_properties(data, 0)
    except mqtt.RemoteProtocolError:
        return
    assert end <= len(data) and all(isinstance(k, properties.Property) for k, _ in props)


def test_the_packets_the_gateway_writes() -> None:
    """DISCONNECT with a reason and a Server Reference, PUBACK/PUBREC and SUBACK in both
    dialects, a SUBSCRIBE rebuilt from its head: each reads back as what it says."""
    ref = packets.disconnect(
        packets.MQTT_5,
        0x9C,
        properties.encode_properties(
            [(properties.Property.SERVER_REFERENCE, "other.example:8883")]
        ),
    )
    assert ref[:3] == b"\xe0\x17\x9c" and ref.endswith(b"other.example:8883")
    pos, length = packets.fixed_header(ref, 0, len(ref)) or (0, 0)
    assert properties.decode_properties(ref, pos + 1)[0] == [
        (properties.Property.SERVER_REFERENCE, "other.example:8883")
    ]
    assert packets.disconnect(packets.MQTT_3_1_1, 0x8B) == b"\xe0\x00"
    assert packets.ack(packets.Kind.PUBREC, 7, packets.MQTT_5, 0x87) == b"\x50\x03\x00\x07\x87"
    assert packets.ack(packets.Kind.PUBACK, 7, packets.MQTT_3_1_1) == b"\x40\x02\x00\x07"
    assert packets.suback(9, [0, 0x80], packets.MQTT_3_1_1) == b"\x90\x04\x00\x09\x00\x80"
    assert packets.suback(9, [1], packets.MQTT_5) == b"\x90\x04\x00\x09\x00\x01"
    assert packets.subscribe(b"\x00\x09", [("a/#", 1)]) == b"\x82\x08\x00\x09\x00\x03a/#\x01"
    assert packets.connack(packets.MQTT_5, packets.NOT_AUTHORIZED) == b"\x20\x03\x00\x87\x00"


_filters = st.lists(
    st.tuples(st.text(alphabet="ab/+#", min_size=1, max_size=8), st.integers(0, 2)),
    min_size=1,
    max_size=5,
)


@given(st.sampled_from([packets.MQTT_3_1_1, packets.MQTT_5]), _filters, st.data())
def test_a_subscribe_cut_to_its_permitted_filters_and_its_suback_refilled(
    level: int, filters: list[tuple[str, int]], data: st.DataObject
) -> None:
    """The SUBSCRIBE the broker sees holds the permitted filters with the packet id (and
    MQTT 5 properties) kept; the broker's SUBACK for it, refilled, answers every filter
    asked: the refused code at the refused places, the broker's codes in order elsewhere."""
    from gateway.mqtt.stream import StreamReader

    head = b"\x12\x34" + (b"\x02\x0b\x07" if level == packets.MQTT_5 else b"")
    asked = packets.subscribe(head, filters)
    refused = sorted(data.draw(st.sets(st.integers(0, len(filters) - 1))))
    allowed = [f for i, f in enumerate(filters) if i not in refused]
    if not allowed:
        return
    cut = packets.subscribe_with(asked, allowed, level)
    (read,) = StreamReader(level, 1 << 16).feed(cut)
    assert (
        read.packet_id == 0x1234
        and [(s.topic_filter, s.options) for s in read.subscriptions] == allowed
    )
    assert cut[packets.body_start(cut) :].startswith(head)  # packet id and properties kept
    granted = list(range(len(allowed)))
    props = b"\x00" if level == packets.MQTT_5 else b""
    broker = packets.suback(0x1234, granted, level, props)
    assert packets.ack_packet_id(broker) == 0x1234
    full = packets.suback_refilled(broker, len(filters), refused, 0x80, level)
    assert full is not None
    codes = list(full[packets.body_start(full) + 2 + len(props) :])
    expected = iter(granted)
    assert codes == [0x80 if i in refused else next(expected) for i in range(len(filters))]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 20000), min_size=1, max_size=12),
    st.lists(st.integers(0, 1 << 20), max_size=10),
)
def test_boundaries_are_followed_however_the_stream_is_cut(
    lengths: list[int], cuts: list[int]
) -> None:
    """``Boundaries``: packets of any length (one- to three-byte lengths), the stream cut
    anywhere (inside a header too): after each piece, ``between`` says whether it ended
    exactly at a packet boundary."""
    stream, ends = b"", {0}
    for i, n in enumerate(lengths):
        stream += bytes((0x30 | (i & 1),)) + encode_length(n) + bytes(n)
        ends.add(len(stream))
    points = sorted({c % (len(stream) + 1) for c in cuts} | {len(stream)})
    follower, start = Boundaries(), 0
    for point in points:
        follower.feed(stream[start:point])
        start = point
        assert follower.between == (point in ends), point
