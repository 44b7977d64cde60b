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


class Clock(Protocol):
    """What the sans-IO cores ask of time: a reactor, or a test's Clock."""

    def seconds(self) -> float: ...
