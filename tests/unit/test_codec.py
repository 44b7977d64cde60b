"""The sans-IO CONNECT reader: every case fed whole, byte by byte, and with trailing data."""

from __future__ import annotations

import pytest

from gateway import mqtt
from gateway.testing import connect_packet, encode_length


def _string(s: bytes) -> bytes:
    return len(s).to_bytes(2, "big") + s


def _packet(body: bytes, first: int = 0x10) -> bytes:
    return bytes((first,)) + encode_length(len(body)) + body


def _feed_whole(reader: mqtt.ConnectReader, data: bytes) -> object:
    reader.receive_data(data)
    return reader.next_event()


def _feed_bytewise(reader: mqtt.ConnectReader, data: bytes) -> object:
    for i in range(len(data)):
        reader.receive_data(data[i : i + 1])
        event = reader.next_event()
        if event is not mqtt.NEED_DATA:
            assert i + 1 == len(data), "event before all bytes were fed"
            return event
    return mqtt.NEED_DATA


FEEDERS = [_feed_whole, _feed_bytewise]

V5_FULL = _packet(
    _string(b"MQTT")
    + bytes((5, 0b11101110))  # username, password, will retain, will QoS 1, will, clean start
    + (30).to_bytes(2, "big")
    + b"\x05\x11\x00\x00\x00\x3c"  # properties: session expiry interval 60
    + _string(b"dev-5")
    + b"\x00"  # will properties
    + _string(b"wills/dev-5")
    + _string(b"gone")
    + _string(b"user")
    + _string(b"secret")
)


@pytest.mark.parametrize("feed", FEEDERS)
@pytest.mark.parametrize("level", [3, 4, 5])
def test_minimal_connect_each_version(feed: object, level: int) -> None:
    """A minimal CONNECT of MQTT 3.1, 3.1.1 and 5.0 yields a Connect with its fields."""
    packet = connect_packet("dev-1", level=level, keep_alive=42)
    event = feed(mqtt.ConnectReader(1024), packet)  # type: ignore[operator]
    assert isinstance(event, mqtt.Connect)
    assert event.protocol_level == level
    assert event.client_id == "dev-1"
    assert event.keep_alive == 42
    assert event.clean_start is True
    assert event.packet == packet


@pytest.mark.parametrize("feed", FEEDERS)
def test_v5_with_properties_will_and_credentials(feed: object) -> None:
    """An MQTT 5 CONNECT with properties, a will and credentials is parsed to the end."""
    event = feed(mqtt.ConnectReader(1024), V5_FULL)  # type: ignore[operator]
    assert isinstance(event, mqtt.Connect)
    assert (event.client_id, event.has_will, event.has_username, event.has_password) == (
        "dev-5",
        True,
        True,
        True,
    )
    assert event.packet == V5_FULL


def test_trailing_data_is_kept_for_the_relay() -> None:
    """Bytes after the CONNECT in the same read are returned as trailing data, untouched."""
    trailing = _packet(b"\x00\x01t" + b"payload", first=0x30) + b"\xc0\x00"
    reader = mqtt.ConnectReader(1024)
    reader.receive_data(connect_packet("a") + trailing)
    event = reader.next_event()
    assert isinstance(event, mqtt.Connect)
    assert event.packet == connect_packet("a")
    assert reader.trailing_data == trailing


def test_need_data_until_complete() -> None:
    """Every strict prefix of a CONNECT asks for more data."""
    packet = connect_packet("prefix-test", level=5)
    for cut in range(len(packet)):
        reader = mqtt.ConnectReader(1024)
        reader.receive_data(packet[:cut])
        assert reader.next_event() is mqtt.NEED_DATA


def _bad(body_or_packet: bytes, raw: bool = False) -> bytes:
    return body_or_packet if raw else _packet(body_or_packet)


BAD = {
    "http": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not_connect"),
    "publish first": (_packet(b"\x00\x01tx", first=0x30), "not_connect"),
    "connect flags in fixed header": (_packet(b"", first=0x12), "malformed"),
    "bad protocol name": (
        _packet(_string(b"MQTX") + b"\x04\x02\x00\x3c" + _string(b"a")),
        "bad_protocol",
    ),
    "3.1 name with level 4": (
        _packet(_string(b"MQIsdp") + b"\x04\x02\x00\x3c" + _string(b"a")),
        "bad_protocol",
    ),
    "level 6": (_packet(_string(b"MQTT") + b"\x06\x02\x00\x3c" + _string(b"a")), "bad_protocol"),
    "reserved flag": (_packet(_string(b"MQTT") + b"\x04\x03\x00\x3c" + _string(b"a")), "malformed"),
    "will qos 3": (_packet(_string(b"MQTT") + b"\x04\x1e\x00\x3c" + _string(b"a")), "malformed"),
    "will qos without will": (
        _packet(_string(b"MQTT") + b"\x04\x0a\x00\x3c" + _string(b"a")),
        "malformed",
    ),
    "password without username (3.1.1)": (
        _packet(_string(b"MQTT") + b"\x04\x42\x00\x3c" + _string(b"a") + _string(b"pw")),
        "malformed",
    ),
    "client id overruns packet": (
        _packet(_string(b"MQTT") + b"\x04\x02\x00\x3c\x00\x09ab"),
        "malformed",
    ),
    "extra bytes inside packet": (
        _packet(_string(b"MQTT") + b"\x04\x02\x00\x3c" + _string(b"a") + b"zz"),
        "malformed",
    ),
    "invalid utf-8 client id": (
        _packet(_string(b"MQTT") + b"\x04\x02\x00\x3c" + _string(b"\xff\xfe")),
        "malformed",
    ),
    "nul in client id": (
        _packet(_string(b"MQTT") + b"\x04\x02\x00\x3c" + _string(b"a\x00b")),
        "malformed",
    ),
    "v5 properties overrun": (
        _packet(_string(b"MQTT") + b"\x05\x02\x00\x3c\x7f" + _string(b"a")),
        "malformed",
    ),
    "5-byte remaining length": (b"\x10\xff\xff\xff\xff\x01", "malformed"),
}


@pytest.mark.parametrize("feed", FEEDERS)
@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_first_packets_are_refused(feed: object, name: str) -> None:
    """Malformed or non-CONNECT input raises RemoteProtocolError with a reason class."""
    data, kind = BAD[name]
    with pytest.raises(mqtt.RemoteProtocolError) as info:
        result = feed(mqtt.ConnectReader(1 << 20), data)  # type: ignore[operator]
        # Bytewise feeding of a truncated-looking case ends in NEED_DATA; those are errors
        # only once the declared length is complete, which every case here is.
        assert result is not mqtt.NEED_DATA, result
    assert info.value.kind == kind


def test_oversized_connect_refused_before_body_arrives() -> None:
    """A CONNECT announcing more than max_packet_size is refused from its header alone."""
    reader = mqtt.ConnectReader(1000)
    reader.receive_data(b"\x10" + encode_length(5000))
    with pytest.raises(mqtt.RemoteProtocolError) as info:
        reader.next_event()
    assert info.value.kind == "too_large"


def test_packet_of_exactly_max_size_is_accepted() -> None:
    """max_packet_size counts the whole packet, fixed header included."""
    packet = connect_packet("x" * 100)
    event = _feed_whole(mqtt.ConnectReader(len(packet)), packet)
    assert isinstance(event, mqtt.Connect)
    with pytest.raises(mqtt.RemoteProtocolError):
        _feed_whole(mqtt.ConnectReader(len(packet) - 1), packet)


def test_reader_is_single_use() -> None:
    """After the CONNECT, the reader refuses more input: the relay owns the stream."""
    reader = mqtt.ConnectReader(1024)
    _feed_whole(reader, connect_packet("a"))
    with pytest.raises(RuntimeError):
        reader.receive_data(b"x")


def test_connack_encodings() -> None:
    """Refusals are written in the client's dialect."""
    assert mqtt.connack(4, mqtt.SERVER_UNAVAILABLE) == b"\x20\x02\x00\x03"
    assert mqtt.connack(3, mqtt.NOT_AUTHORIZED) == b"\x20\x02\x00\x05"
    assert mqtt.connack(5, mqtt.SERVER_UNAVAILABLE) == b"\x20\x03\x00\x88\x00"
    assert mqtt.connack(5, mqtt.NOT_AUTHORIZED) == b"\x20\x03\x00\x87\x00"
