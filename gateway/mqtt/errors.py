"""Errors of the MQTT codec."""

from __future__ import annotations

from gateway.errors import GatewayError


class ProtocolError(GatewayError):
    """Base of the codec's errors. ``kind`` is a short machine-readable class."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something that is not a valid MQTT CONNECT within the limits."""
