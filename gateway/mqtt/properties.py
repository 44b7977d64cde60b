"""MQTT 5 properties (sans-IO): every identifier with the form of its value, the encoder
and the decoder (MQTT 5.0, 2.2.2). The gateway writes a Reason String or a Server Reference
on its own DISCONNECTs; the decoder reads any, validated to the last byte."""

from __future__ import annotations

import enum
from collections.abc import Iterable

from gateway.mqtt.errors import RemoteProtocolError
from gateway.mqtt.packets import (
    decode_varint,
    encode_binary,
    encode_length,
    encode_string,
    read_binary,
    read_properties_length,
    read_utf8,
)


class Value(enum.Enum):
    """How a property's value is written."""

    BYTE = 1
    TWO = 2
    FOUR = 4
    VARINT = 0
    UTF8 = "utf8"
    BINARY = "binary"
    PAIR = "pair"


class Property(enum.IntEnum):
    """MQTT 5 property identifiers (MQTT 5.0, 2.2.2.2); ``TYPES`` gives each one's form."""

    PAYLOAD_FORMAT_INDICATOR = 0x01
    MESSAGE_EXPIRY_INTERVAL = 0x02
    CONTENT_TYPE = 0x03
    RESPONSE_TOPIC = 0x08
    CORRELATION_DATA = 0x09
    SUBSCRIPTION_IDENTIFIER = 0x0B
    SESSION_EXPIRY_INTERVAL = 0x11
    ASSIGNED_CLIENT_IDENTIFIER = 0x12
    SERVER_KEEP_ALIVE = 0x13
    AUTHENTICATION_METHOD = 0x15
    AUTHENTICATION_DATA = 0x16
    REQUEST_PROBLEM_INFORMATION = 0x17
    WILL_DELAY_INTERVAL = 0x18
    REQUEST_RESPONSE_INFORMATION = 0x19
    RESPONSE_INFORMATION = 0x1A
    SERVER_REFERENCE = 0x1C
    REASON_STRING = 0x1F
    RECEIVE_MAXIMUM = 0x21
    TOPIC_ALIAS_MAXIMUM = 0x22
    TOPIC_ALIAS = 0x23
    MAXIMUM_QOS = 0x24
    RETAIN_AVAILABLE = 0x25
    USER_PROPERTY = 0x26
    MAXIMUM_PACKET_SIZE = 0x27
    WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
    SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
    SHARED_SUBSCRIPTION_AVAILABLE = 0x2A


_P, _V = Property, Value
TYPES: dict[Property, Value] = {
    _P.PAYLOAD_FORMAT_INDICATOR: _V.BYTE,
    _P.MESSAGE_EXPIRY_INTERVAL: _V.FOUR,
    _P.CONTENT_TYPE: _V.UTF8,
    _P.RESPONSE_TOPIC: _V.UTF8,
    _P.CORRELATION_DATA: _V.BINARY,
    _P.SUBSCRIPTION_IDENTIFIER: _V.VARINT,
    _P.SESSION_EXPIRY_INTERVAL: _V.FOUR,
    _P.ASSIGNED_CLIENT_IDENTIFIER: _V.UTF8,
    _P.SERVER_KEEP_ALIVE: _V.TWO,
    _P.AUTHENTICATION_METHOD: _V.UTF8,
    _P.AUTHENTICATION_DATA: _V.BINARY,
    _P.REQUEST_PROBLEM_INFORMATION: _V.BYTE,
    _P.WILL_DELAY_INTERVAL: _V.FOUR,
    _P.REQUEST_RESPONSE_INFORMATION: _V.BYTE,
    _P.RESPONSE_INFORMATION: _V.UTF8,
    _P.SERVER_REFERENCE: _V.UTF8,
    _P.REASON_STRING: _V.UTF8,
    _P.RECEIVE_MAXIMUM: _V.TWO,
    _P.TOPIC_ALIAS_MAXIMUM: _V.TWO,
    _P.TOPIC_ALIAS: _V.TWO,
    _P.MAXIMUM_QOS: _V.BYTE,
    _P.RETAIN_AVAILABLE: _V.BYTE,
    _P.USER_PROPERTY: _V.PAIR,
    _P.MAXIMUM_PACKET_SIZE: _V.FOUR,
    _P.WILDCARD_SUBSCRIPTION_AVAILABLE: _V.BYTE,
    _P.SUBSCRIPTION_IDENTIFIER_AVAILABLE: _V.BYTE,
    _P.SHARED_SUBSCRIPTION_AVAILABLE: _V.BYTE,
}

PropertyValue = int | str | bytes | tuple[str, str]


def encode_properties(properties: Iterable[tuple[Property, PropertyValue]]) -> bytes:
    """MQTT 5 properties, their length first. ValueError for a value its form cannot hold."""
    out = bytearray()
    for key, value in properties:
        form = TYPES[key]
        out.append(key)
        if form in (Value.BYTE, Value.TWO, Value.FOUR):
            assert isinstance(value, int)
            out += value.to_bytes(form.value, "big")  # OverflowError is a ValueError's kin
        elif form is Value.VARINT:
            assert isinstance(value, int)
            out += encode_length(value)
        elif form is Value.UTF8:
            assert isinstance(value, str)
            out += encode_string(value, key.name.lower())
        elif form is Value.BINARY:
            assert isinstance(value, bytes)
            out += encode_binary(value, key.name.lower())
        else:
            assert isinstance(value, tuple)
            out += encode_string(value[0], "user property name")
            out += encode_string(value[1], "user property value")
    return encode_length(len(out)) + bytes(out)


def decode_properties(
    raw: bytes | memoryview, pos: int, what: str = "properties"
) -> tuple[list[tuple[Property, PropertyValue]], int]:
    """The MQTT 5 properties at ``pos`` of a complete packet, and the position after them.
    RemoteProtocolError for an unknown identifier or a value that runs past them."""
    length, pos = read_properties_length(raw, pos, what)
    end = pos + length
    view = raw[:end]
    out: list[tuple[Property, PropertyValue]] = []
    while pos < end:
        try:
            key = Property(view[pos])
        except ValueError:
            unknown = f"{what}: unknown property 0x{view[pos]:02x}"
            raise RemoteProtocolError("malformed", unknown) from None
        pos += 1
        form = TYPES[key]
        value: PropertyValue
        if form in (Value.BYTE, Value.TWO, Value.FOUR):
            size = form.value
            assert isinstance(size, int)
            if pos + size > end:
                raise RemoteProtocolError("malformed", f"{what} truncated")
            value = int.from_bytes(view[pos : pos + size], "big")
            pos += size
        elif form is Value.VARINT:
            decoded = decode_varint(view, pos, end, what)
            if decoded is None:
                raise RemoteProtocolError("malformed", f"{what} truncated")
            value, pos = decoded
        elif form is Value.UTF8:
            value, pos = read_utf8(view, pos, what)
        elif form is Value.BINARY:
            value, pos = read_binary(view, pos, what)
        else:
            name, pos = read_utf8(view, pos, what)
            text, pos = read_utf8(view, pos, what)
            value = (name, text)
        out.append((key, value))
    return out, end
