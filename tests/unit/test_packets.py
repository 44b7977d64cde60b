"""The one MQTT encoder (CONNECT, CONNACK) and the CONNACK reader of the health check."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import mqtt
from gateway.mqtt.packets import encode_length, read_connack


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
