"""Per-device limits of the policy edge (sans-IO, pure): EMQX 5's rates and token buckets.

A rate is written as EMQX writes it: ``100/s``, ``1MB/s``, ``10000/60m`` (a count or a size,
per a duration). A ``Bucket`` holds up to ``burst`` tokens and gains ``rate`` tokens a
second; a device's packet takes its tokens (a message, or its size in bytes). When a
bucket cannot pay, ``pause_for`` says how long until it can: the relay holds that packet and
stops reading from the device for that long (TCP backpressure, as EMQX does) rather than
dropping anything, so the broker never gets more than burst + rate * t in t seconds.
"""

from __future__ import annotations

import re

import attrs

_UNITS = {"": 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}
_PERIODS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(
    r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>[kmg]?b)?\s*/\s*(?P<k>\d+)?\s*(?P<per>ms|s|m|h)\s*$",
    re.IGNORECASE,
)


def parse_rate(text: str, sized: bool) -> float:
    """Tokens per second from ``100/s`` (``sized``: ``1MB/s`` in bytes), ``10000/60m``.
    ValueError says why not."""
    m = _RATE.match(text)
    if m is None:
        raise ValueError(f"expected a rate such as {'1MB/s' if sized else '100/s'}, got {text!r}")
    unit = (m["unit"] or "").lower()
    if unit and not sized:
        raise ValueError(f"a message rate counts messages, not bytes: {text!r}")
    amount = float(m["n"]) * _UNITS[unit]
    period = int(m["k"] or 1) * _PERIODS[m["per"].lower()]
    if amount <= 0 or period <= 0:
        raise ValueError(f"a rate must be positive: {text!r}")
    return amount / period


@attrs.define
class Bucket:
    """Tokens up to ``burst``, ``rate`` more each second; starts full."""

    rate: float
    burst: float
    tokens: float = attrs.field(default=None)
    at: float = 0.0

    def __attrs_post_init__(self) -> None:
        if self.tokens is None:
            self.tokens = self.burst

    def level(self, now: float) -> float:
        """The tokens held at ``now`` (refilled since the last take, up to the burst)."""
        tokens = self.tokens + (now - self.at) * self.rate
        return tokens if tokens < self.burst else self.burst

    def take(self, amount: float, now: float) -> float:
        """Take ``amount`` tokens; the seconds to wait before the next packet (0: none).
        The tokens are taken even when short (the packet has arrived): the debt is paid by
        waiting."""
        self.tokens = self.level(now) - amount
        self.at = now
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


@attrs.frozen
class DeviceLimits:
    """A listener's per-device limits (None: not limited)."""

    messages_rate: float | None = None
    messages_burst: float = 0.0
    bytes_rate: float | None = None
    bytes_burst: float = 0.0
    disconnect: bool = False  # over the rate: end the session rather than pause it

    def buckets(self, now: float) -> tuple[Bucket | None, Bucket | None]:
        messages = (
            Bucket(self.messages_rate, max(self.messages_burst, 1.0), at=now)
            if self.messages_rate
            else None
        )
        sizes = (
            Bucket(self.bytes_rate, max(self.bytes_burst, 1.0), at=now) if self.bytes_rate else None
        )
        return messages, sizes


def pause_for(buckets: tuple[Bucket | None, Bucket | None], size: int, now: float) -> float:
    """A PUBLISH of ``size`` bytes arrived: how long to stop reading from the device."""
    messages, sizes = buckets
    wait = 0.0
    if messages is not None:
        wait = max(wait, messages.take(1, now))
    if sizes is not None:
        wait = max(wait, sizes.take(size, now))
    return wait


def pay_now(buckets: tuple[Bucket | None, Bucket | None], size: int, now: float) -> bool:
    """A PUBLISH of ``size`` bytes takes its tokens if every bucket has them now (True);
    otherwise nothing is taken (False: ``pause_for`` says how long it is to wait)."""
    # Bucket.level's refill, written out: this runs for every message of a limited device.
    messages, sizes = buckets
    m = s = 0.0
    if messages is not None:
        m = messages.tokens + (now - messages.at) * messages.rate
        if m > messages.burst:
            m = messages.burst
        if m < 1:
            return False
    if sizes is not None:
        s = sizes.tokens + (now - sizes.at) * sizes.rate
        if s > sizes.burst:
            s = sizes.burst
        if s < size:
            return False
        sizes.tokens = s - size
        sizes.at = now
    if messages is not None:
        messages.tokens = m - 1
        messages.at = now
    return True
