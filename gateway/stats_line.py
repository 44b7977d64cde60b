"""The stats lines (``stats_log_interval``): their structured keys and their text, from the
status records. Pure."""

from __future__ import annotations

from typing import Any

from gateway.clock import format_timestamp
from gateway.status import ListenerStatus, WorkerState, WorkerStatus


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


def worker_fields(workers: list[WorkerStatus]) -> dict[str, Any]:
    """The structured keys of the workers' stats line (with ``workers``)."""
    return {
        "workers": len(workers),
        "serving": sum(1 for w in workers if w.state == WorkerState.SERVING),
        "restarts": sum(w.restarts for w in workers),
        "active_per_worker": [w.active for w in workers],
        "accepted_per_worker": [w.accepted for w in workers],
    }


def render_worker_line(fields: dict[str, Any]) -> str:
    """``stats workers: serving=N/M restarts= active_per_worker=[...] ...``."""
    rest = " ".join(f"{k}={v}" for k, v in fields.items() if k not in ("workers", "serving"))
    return f"stats workers: serving={fields['serving']}/{fields['workers']} {rest}"
