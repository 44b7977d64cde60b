"""Sans-IO MQTT: the first-packet reader and the packets the gateway writes."""

from gateway.mqtt.codec import NEED_DATA, Connect, ConnectReader
from gateway.mqtt.errors import ProtocolError, RemoteProtocolError
from gateway.mqtt.packets import (
    MQTT_3_1,
    MQTT_3_1_1,
    MQTT_5,
    NOT_AUTHORIZED,
    SERVER_UNAVAILABLE,
    Connack,
    connack,
    connect_packet,
    read_connack,
)

__all__ = [
    "MQTT_3_1",
    "MQTT_3_1_1",
    "MQTT_5",
    "NEED_DATA",
    "NOT_AUTHORIZED",
    "SERVER_UNAVAILABLE",
    "Connack",
    "Connect",
    "ConnectReader",
    "ProtocolError",
    "RemoteProtocolError",
    "connack",
    "connect_packet",
    "read_connack",
]
