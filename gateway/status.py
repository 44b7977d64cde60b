"""Status in one place: the counters the hot path updates, and typed snapshot records of
each listener (counters, CRL sources, OCSP staple) and of the reactor.

Services fill the snapshots on request (``ListenerService.status()``); the stats line is
rendered from them with structured log keys, and later status surfaces (metrics, a status
page) read the same records. Pure: no Twisted.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs

from gateway.clock import format_timestamp


@attrs.define(slots=True)
class ListenerStats:
    """What one listener has done since start (updated on the hot path: plain ints)."""

    name: str
    active: int = 0
    accepted: int = 0  # CONNECT forwarded to the broker
    refused: Counter[str] = attrs.Factory(Counter)  # reason class -> count
    bytes_in: int = 0  # client -> broker, after the CONNECT
    bytes_out: int = 0  # broker -> client

    def refuse(self, reason: str) -> None:
        self.refused[reason] += 1

    def snapshot(self) -> StatsSnapshot:
        return StatsSnapshot(
            self.name,
            self.active,
            self.accepted,
            dict(self.refused),
            self.bytes_in,
            self.bytes_out,
        )


@attrs.frozen
class StatsSnapshot:
    listener: str
    active: int
    accepted: int
    refused: dict[str, int]
    bytes_in: int
    bytes_out: int


@attrs.frozen
class CrlStatus:
    """One CRL held (or last seen) from a source."""

    issuer: str
    number: int | None
    this_update: float
    next_update: float | None
    entries: int


@attrs.frozen
class CrlSourceStatus:
    url: str
    discovered: bool
    last_fetch: float | None
    last_result: str | None  # updated, unchanged, older, loaded_from_disk, error
    last_error: str | None
    failures: int
    next_refresh: float | None
    size: int | None
    crls: tuple[CrlStatus, ...]


@attrs.frozen
class CrlCheckStatus:
    """A listener's CRL checking: CRLs held, decisions counted, each source."""

    held: int
    counts: dict[str, int]
    sources: tuple[CrlSourceStatus, ...]


@attrs.frozen
class OcspStatus:
    certificate: str
    serial: str
    responder: str
    status: str | None  # good | revoked | None (nothing stapled)
    produced_at: float | None
    this_update: float | None
    next_update: float | None
    last_fetch: float | None
    last_result: str | None  # updated, unchanged, older, error, loaded_from_disk, dropped
    last_error: str | None
    failures: int
    next_refresh: float | None
    staples_sent: int


@attrs.frozen
class ListenerStatus:
    stats: StatsSnapshot
    crl: CrlCheckStatus | None = None
    ocsp: OcspStatus | None = None


def stats_fields(status: ListenerStatus, max_lag: float) -> dict[str, Any]:
    """The structured keys of a listener's stats line."""
    s = status.stats
    fields: dict[str, Any] = {
        "listener": s.listener,
        "active": s.active,
        "accepted": s.accepted,
        "refused": s.refused,
        "bytes_in": s.bytes_in,
        "bytes_out": s.bytes_out,
        "max_reactor_lag_ms": round(max_lag * 1000, 1),
    }
    if status.crl is not None:
        fields["crls_held"] = status.crl.held
        fields.update({f"crl_{k}": v for k, v in status.crl.counts.items()})
    if status.ocsp is not None:
        fields["ocsp_status"] = status.ocsp.status or "none"
        fields["ocsp_next_update"] = format_timestamp(status.ocsp.next_update)
        fields["ocsp_staples_sent"] = status.ocsp.staples_sent
    return fields


def render_stats_line(fields: dict[str, Any]) -> str:
    """``stats NAME: key=value ...``: the text of the stats line, from its fields."""
    rest = " ".join(f"{k}={v}" for k, v in fields.items() if k != "listener")
    return f"stats {fields['listener']}: {rest}"
