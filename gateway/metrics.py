"""Per-listener counters, read by logs now and by status surfaces later."""

from __future__ import annotations

from collections import Counter

import attrs


@attrs.define
class ListenerStats:
    """What one listener has done since start."""

    name: str
    active: int = 0
    accepted: int = 0  # CONNECT forwarded to the broker
    refused: Counter[str] = attrs.Factory(Counter)  # reason class -> count
    bytes_in: int = 0  # client -> broker, after the CONNECT
    bytes_out: int = 0  # broker -> client

    def refuse(self, reason: str) -> None:
        self.refused[reason] += 1

    def snapshot(self) -> dict[str, object]:
        return {
            "listener": self.name,
            "active": self.active,
            "accepted": self.accepted,
            "refused": dict(self.refused),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }
