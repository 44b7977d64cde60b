"""What operators read of a running listener: its status record (counters, CRL sources,
staple, brokers) and the report of a refresh asked for by ``POST /refresh``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.clock import format_timestamp
from gateway.config.values import format_bind
from gateway.status import BrokerStatus, CrlCheckStatus, ListenerStatus

if TYPE_CHECKING:
    from gateway.listener import ListenerService


def own_status(listener: ListenerService) -> ListenerStatus:
    """This process's view of a listener, in one record."""
    parts = listener.parts
    settings = parts.settings
    crl = None
    if parts.crl is not None and parts.revocation is not None:
        crl = CrlCheckStatus(
            held=len(parts.revocation.cache.infos()),
            counts=dict(parts.revocation.counts),
            sources=parts.crl.status(),
        )
    stapler = parts.stapler
    ocsp = stapler.status() if stapler is not None else None  # None: another process staples
    tls = settings.tls
    return ListenerStatus(
        listener.stats.snapshot(),
        crl,
        ocsp,
        bind=format_bind(settings.bind),
        upstream=format_bind(settings.upstream.address),
        accepting=listener.port.accepting,
        not_accepting=listener.port.waiting_reason,
        tls=f"{tls.profile} ({','.join(tls.versions)})",
        brokers=tuple(
            BrokerStatus(b.name, b.up, b.active, b.sessions, b.failures, b.last_error)
            for b in parts.pool.brokers
        ),
    )


def refresh_report(listeners: list[ListenerService]) -> dict[str, Any]:
    """After ``POST /refresh``: each listener's sources and staple, as JSON."""
    out: dict[str, Any] = {"ok": True, "listeners": {}}
    for ls in listeners:
        parts = ls.parts
        entry: dict[str, Any] = {}
        if parts.crl is not None and ls.role.fetches:
            entry["crl"] = [
                {
                    "url": src.url,
                    "result": src.last_result,
                    "error": src.last_error,
                    "crls": [
                        {"issuer": c.issuer, "number": c.number, "entries": c.entries}
                        for c in src.crls
                    ],
                }
                for src in parts.crl.status()
            ]
        if parts.stapler is not None and ls.role.fetches:
            o = parts.stapler.status()
            entry["ocsp"] = {
                "status": o.status,
                "result": o.last_result,
                "error": o.last_error,
                "next_update": format_timestamp(o.next_update),
            }
        out["listeners"][parts.name] = entry or "nothing to refresh"
    return out
