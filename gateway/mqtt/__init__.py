"""Sans-IO MQTT: the first-packet reader and the packets the gateway writes."""

from gateway.mqtt.codec import (
    MQTT_3_1,
    MQTT_3_1_1,
    MQTT_5,
    NEED_DATA,
    NOT_AUTHORIZED,
    SERVER_UNAVAILABLE,
    Connect,
    ConnectReader,
    connack,
)
from gateway.mqtt.errors import ProtocolError, RemoteProtocolError

__all__ = [
    "MQTT_3_1",
    "MQTT_3_1_1",
    "MQTT_5",
    "NEED_DATA",
    "NOT_AUTHORIZED",
    "SERVER_UNAVAILABLE",
    "Connect",
    "ConnectReader",
    "ProtocolError",
    "RemoteProtocolError",
    "connack",
]
