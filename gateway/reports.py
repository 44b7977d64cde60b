"""A worker's report to its master, and the master's sum of them (pure): the counters of
several processes as one listener's (``merge_reports``), a worker's state as the master
sees it."""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs

from gateway.status import (
    BrokerStatus,
    CrlCheckStatus,
    HistogramSnapshot,
    ListenerStatus,
    StatsSnapshot,
    is_ocsp_count,
)


def _histogram(d: Any) -> HistogramSnapshot | None:
    if not d:
        return None
    return HistogramSnapshot(
        tuple(float(b) for b in d["bounds"]), tuple(int(c) for c in d["cumulative"]), d["total"]
    )


def stats_from_dict(d: dict[str, Any]) -> StatsSnapshot:
    """A StatsSnapshot from ``attrs.asdict`` of one (a worker's report, as JSON)."""
    return StatsSnapshot(
        str(d["listener"]),
        int(d["active"]),
        int(d["accepted"]),
        {str(k): int(v) for k, v in d["refused"].items()},
        int(d["bytes_in"]),
        int(d["bytes_out"]),
        {str(k): int(v) for k, v in d.get("closed", {}).items()},
        _histogram(d.get("handshake_seconds")),
        _histogram(d.get("upstream_connect_seconds")),
        int(d.get("upstream_failures", 0)),
        int(d.get("upstream_tls", 0)),
        int(d.get("upstream_tls_resumed", 0)),
        int(d.get("throttled", 0)),
        float(d.get("throttled_seconds", 0.0)),
        {str(k): int(v) for k, v in d.get("acl_denied", {}).items()},
        {str(k): int(v) for k, v in d.get("disconnects_sent", {}).items()},
        {str(k): int(v) for k, v in d.get("sessions", {}).items()},
        {str(k): int(v) for k, v in d.get("refused_transport", {}).items()},
        {str(k): int(v) for k, v in d.get("tenants", {}).items()},
        {str(k): int(v) for k, v in d.get("tenant_refused", {}).items()},
    )


def _add_counts(parts: list[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for part in parts:
        total.update(part)
    return dict(total)


def _add_histograms(parts: list[HistogramSnapshot | None]) -> HistogramSnapshot | None:
    present = [h for h in parts if h is not None]
    if not present:
        return None
    bounds = present[0].bounds
    same = [h for h in present if h.bounds == bounds]
    return HistogramSnapshot(
        bounds,
        tuple(sum(col) for col in zip(*(h.cumulative for h in same), strict=True)),
        sum(h.total for h in same),
    )


def merge_stats(listener: str, parts: list[StatsSnapshot]) -> StatsSnapshot:
    """The counters of several worker processes as one listener's."""
    return StatsSnapshot(
        listener,
        sum(p.active for p in parts),
        sum(p.accepted for p in parts),
        _add_counts([p.refused for p in parts]),
        sum(p.bytes_in for p in parts),
        sum(p.bytes_out for p in parts),
        _add_counts([p.closed for p in parts]),
        _add_histograms([p.handshake_seconds for p in parts]),
        _add_histograms([p.upstream_connect_seconds for p in parts]),
        sum(p.upstream_failures for p in parts),
        sum(p.upstream_tls for p in parts),
        sum(p.upstream_tls_resumed for p in parts),
        sum(p.throttled for p in parts),
        sum(p.throttled_seconds for p in parts),
        _add_counts([p.acl_denied for p in parts]),
        _add_counts([p.disconnects_sent for p in parts]),
        _add_counts([p.sessions for p in parts]),
        _add_counts([p.refused_transport for p in parts]),
        _add_counts([p.tenants for p in parts]),
        _add_counts([p.tenant_refused for p in parts]),
    )


@attrs.frozen
class ListenerReport:
    """One worker's counters for one listener (the master adds them up)."""

    stats: StatsSnapshot
    crl_counts: dict[str, int]
    staples_sent: int
    accepting: bool
    brokers: tuple[BrokerStatus, ...]
    auth_counts: dict[str, int] = attrs.field(factory=dict)  # the hook's, decided here

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=True)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ListenerReport:
        return cls(
            stats_from_dict(d["stats"]),
            {str(k): int(v) for k, v in d.get("crl_counts", {}).items()},
            int(d.get("staples_sent", 0)),
            bool(d.get("accepting")),
            tuple(BrokerStatus(**b) for b in d.get("brokers", ())),
            {str(k): int(v) for k, v in d.get("auth_counts", {}).items()},
        )


@attrs.frozen
class WorkerReport:
    """What a worker tells its master every second."""

    pid: int
    max_lag: float
    listeners: dict[str, ListenerReport]

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "max_lag": self.max_lag,
            "listeners": {name: r.to_json() for name, r in self.listeners.items()},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> WorkerReport:
        return cls(
            int(d.get("pid", 0)),
            float(d.get("max_lag", 0.0)),
            {str(k): ListenerReport.from_json(v) for k, v in d.get("listeners", {}).items()},
        )


def merge_reports(own: ListenerStatus, reports: list[ListenerReport]) -> ListenerStatus:
    """A listener's status in a master: its own CRL sources and staple, the workers'
    counters added up (connections, CRL decisions, staples sent, each broker)."""
    stats = merge_stats(own.stats.listener, [r.stats for r in reports])
    counts = _add_counts([r.crl_counts for r in reports])
    crl = own.crl
    if crl is not None:
        crl_counts = {k: v for k, v in counts.items() if not is_ocsp_count(k)}
        crl = CrlCheckStatus(crl.held, crl_counts, crl.sources)
    client_ocsp = own.client_ocsp
    if client_ocsp is not None and reports:
        # The master holds the answers and asks the responders; the workers decide.
        client_ocsp = attrs.evolve(
            client_ocsp,
            hits=counts.get("ocsp_cache_hits", 0),
            misses=counts.get("ocsp_cache_misses", 0),
            decisions={
                k: v
                for k, v in counts.items()
                if is_ocsp_count(k) and k not in ("ocsp_cache_hits", "ocsp_cache_misses")
            },
        )
    ocsp = own.ocsp
    if ocsp is not None:
        ocsp = attrs.evolve(ocsp, staples_sent=sum(r.staples_sent for r in reports))
    auth = own.auth
    if auth is not None and reports:  # (the workers ask; each keeps its own cache)
        auth = attrs.evolve(auth, counts=_add_counts([r.auth_counts for r in reports]))
    brokers: dict[str, BrokerStatus] = {}
    for r in reports:
        for b in r.brokers:
            seen = brokers.get(b.name)
            brokers[b.name] = (
                b
                if seen is None
                else BrokerStatus(
                    b.name,
                    seen.up or b.up,
                    seen.active + b.active,
                    seen.sessions + b.sessions,
                    seen.failures + b.failures,
                    seen.last_error or b.last_error,
                )
            )
    return attrs.evolve(
        own,
        stats=stats,
        crl=crl,
        ocsp=ocsp,
        client_ocsp=client_ocsp,
        auth=auth,
        brokers=tuple(brokers.values()) or own.brokers,
    )
