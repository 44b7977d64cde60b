"""Time conventions shared by CRL, OCSP and status: the clock-skew allowance and one
timestamp format. Pure: no I/O, no Twisted."""

from __future__ import annotations

import datetime
from typing import Protocol

# Seconds a thisUpdate (CRL or OCSP) may lie in the future: clocks of CAs and gateways differ.
CLOCK_SKEW = 300.0


def utc_timestamp(value: datetime.datetime) -> float:
    """POSIX seconds of a datetime; a naive one is taken as UTC (as cryptography returns)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.timestamp()


def format_timestamp(ts: float | None) -> str:
    """``2026-11-27T12:00:00Z``, or ``-`` for none: the one form logs and status use."""
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str | None) -> float | None:
    """The POSIX seconds of ``format_timestamp``'s text (None for ``-`` or none)."""
    if not text or text == "-":
        return None
    parsed = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    return parsed.replace(tzinfo=datetime.timezone.utc).timestamp()


def duration(seconds: float) -> str:
    """``8 s``, ``12 min``, ``5 h``, ``3 days``: a length of time, in words."""
    left = abs(seconds)
    for size, unit, least in ((86400, "days", 2 * 86400), (3600, "h", 3600), (60, "min", 60)):
        if left >= least:
            return f"{left / size:.0f} {unit}"
    return f"{left:.0f} s"


def relative(seconds: float) -> str:
    """``in 8 s``, ``12 min ago``, ``3 days ago``: a time relative to now, in words."""
    return f"in {duration(seconds)}" if seconds > 0 else f"{duration(seconds)} ago"


class Clock(Protocol):
    """What the sans-IO cores ask of time: a reactor, or a test's Clock."""

    def seconds(self) -> float: ...
