"""Errors of the MQTT codec."""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of the codec's errors. ``kind`` is a short machine-readable class."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class RemoteProtocolError(ProtocolError):
    """The peer sent something that is not a valid MQTT CONNECT within the limits."""
