"""mqttgw: a TLS gateway for MQTT brokers."""

__version__ = "0.1.0"
