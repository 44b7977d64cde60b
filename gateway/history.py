"""The last hour in memory (pure): a ring buffer of the gateway's counters, sampled every
``INTERVAL`` seconds, and the series the status page draws from it: connections accepted
and refused (by reason) per interval, TLS handshakes per second, open connections, and the
age of the oldest CRL in force. A fixed number of samples: memory does not grow."""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

from gateway.status import GatewayStatus, Sample

INTERVAL = 10.0  # seconds between samples
CAPACITY = 360  # an hour of them


def sample_of(status: GatewayStatus) -> Sample:
    refused: Counter[str] = Counter()
    accepted = handshakes = active = 0
    oldest: float | None = None
    for ls in status.listeners:
        s = ls.stats
        accepted += s.accepted
        refused.update(s.refused)
        handshakes += s.handshake_seconds.count if s.handshake_seconds is not None else 0
        active += s.active
        if ls.crl is not None:
            for src in ls.crl.sources:
                for crl in src.crls:
                    oldest = crl.this_update if oldest is None else min(oldest, crl.this_update)
    age = None if oldest is None else max(0.0, status.now - oldest)
    return Sample(status.now, accepted, dict(refused), handshakes, active, age)


class History:
    def __init__(self, capacity: int = CAPACITY) -> None:
        self.samples: deque[Sample] = deque(maxlen=capacity)

    def record(self, status: GatewayStatus) -> None:
        self.samples.append(sample_of(status))

    def snapshot(self) -> tuple[Sample, ...]:
        return tuple(self.samples)


def series(samples: tuple[Sample, ...]) -> dict[str, Any]:
    """Per interval between two samples: accepted, refused by reason (counts), handshakes
    per second; at each sample: open connections, CRL age. ``ago``: seconds before the
    last sample, for the time axis."""
    points = list(samples)
    if len(points) < 2:
        return {
            "interval": INTERVAL,
            "ago": [],
            "accepted": [],
            "refused": {},
            "handshakes_per_second": [],
            "active": [],
            "crl_age": [],
        }
    last = points[-1].time
    pairs = list(zip(points, points[1:], strict=False))
    reasons = sorted({r for p in points for r in p.refused})
    return {
        "interval": INTERVAL,
        "ago": [round(last - b.time, 1) for _, b in pairs],
        "accepted": [max(0, b.accepted - a.accepted) for a, b in pairs],
        "refused": {
            r: [max(0, b.refused.get(r, 0) - a.refused.get(r, 0)) for a, b in pairs]
            for r in reasons
        },
        "handshakes_per_second": [
            round(max(0, b.handshakes - a.handshakes) / max(b.time - a.time, 1e-9), 2)
            for a, b in pairs
        ],
        "active": [b.active for _, b in pairs],
        "crl_age": [None if b.crl_age is None else round(b.crl_age) for _, b in pairs],
    }
