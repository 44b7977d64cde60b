"""The gateway's status as a JSON document (``GET /status``) and its problems, errors
first. The status page (``admin.page``) and ``mqttgw status`` (``admin.terminal``) are both
rendered from this document, so they say the same. Pure: records in, data out.
"""

from __future__ import annotations

from typing import Any

import attrs

from gateway.clock import format_timestamp
from gateway.history import series
from gateway.status import (
    EXPIRY_CRITICAL_DAYS,
    EXPIRY_WARNING_DAYS,
    CertificateStatus,
    CrlSourceStatus,
    GatewayStatus,
    ListenerStatus,
    OcspStatus,
    TenantStatus,
)

ERROR = "error"
WARNING = "warning"

# The revocation checker's counts, in plain words (the status page, mqttgw status).
DECISION_WORDS = {
    "revoked": "refused as revoked",
    "resumed_refused": "resumed sessions refused",
    "held_for_crl": "held while their CRL was fetched",
    "crl_missing": "refused: no CRL of their CA",
    "crl_expired": "refused: their CA's CRL expired",
    "crl_incomplete": "refused: the CRLs held do not cover them",
    "crl_missing_accepted": "admitted without a CRL (policy accept)",
    "crl_expired_accepted": "admitted with an expired CRL (policy accept)",
    "crl_incomplete_accepted": "admitted with incomplete CRLs (policy accept)",
    "held_for_ocsp": "held while the OCSP responder was asked",
    "ocsp_revoked": "refused: revoked (OCSP)",
    "ocsp_unknown": "refused: unknown to the OCSP responder",
    "ocsp_unavailable": "refused: no valid OCSP answer in time",
    "ocsp_unknown_accepted": "admitted although unknown to OCSP (policy accept)",
    "ocsp_unavailable_accepted": "admitted without an OCSP answer (policy accept)",
}


def pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in counts.items()) or "-"


def in_words(counts: dict[str, int]) -> str:
    """The checker's counts as a person reads them."""
    return ", ".join(f"{DECISION_WORDS.get(k, k)}: {v}" for k, v in counts.items()) or "none yet"


def _by_tenant(counts: dict[str, int]) -> dict[str, dict[str, int]]:
    """``"<tenant> <reason>"`` counts as {tenant: {reason: count}}."""
    out: dict[str, dict[str, int]] = {}
    for key, count in sorted(counts.items()):
        tenant, _, reason = key.partition(" ")
        out.setdefault(tenant, {})[reason] = count
    return out


def _tenant(
    t: TenantStatus, ls: ListenerStatus, refused: dict[str, dict[str, int]], now: float
) -> dict[str, Any]:
    """One tenant: its configuration, counters and certificate, and its CRL sources' state."""
    s = ls.stats
    cert = next((c for c in ls.certificates if c.role == f"tenant {t.id}"), None)
    sources = ls.crl.sources if ls.crl is not None else ()
    return {
        "id": t.id,
        "server_names": list(t.server_names),
        "enabled": t.enabled,
        "own_cas": t.own_cas,
        "sessions": s.tenants.get(t.id, 0),
        "refused": refused.get(t.id, {}),
        "certificate_not_after": _ts(cert.not_after) if cert is not None else None,
        "certificate_days_left": round(cert.days_left(now), 1) if cert is not None else None,
        "crl_expired_policy": t.crl_policy,
        "crl_sources": [
            {
                "url": src.url,
                "crls_held": len(src.crls),
                "last_result": src.last_result,
                "last_error": src.last_error,
            }
            for src in sources
            if src.url in t.crl_sources
        ],
        "auth_http_url": t.auth_url,
        "ocsp": _ocsp(t.ocsp) if t.ocsp is not None else None,
        "admits_devices": t.enabled and not t.undecided,
        "not_admitting": t.undecided or (None if t.enabled else "disabled"),
    }


def _ts(value: float | None) -> str | None:
    return None if value is None else format_timestamp(value)


def problems(status: GatewayStatus) -> list[dict[str, str]]:
    """What an operator must look at, errors first: a listener not accepting, a CRL past
    its nextUpdate, a CRL source failing or never fetched, a missing or revoked staple, a
    refused reload."""
    out: list[dict[str, str]] = []

    def add(severity: str, listener: str, what: str) -> None:
        out.append({"severity": severity, "listener": listener, "what": what})

    now = status.now
    for ls in status.listeners:
        name = ls.stats.listener
        if not ls.accepting:
            add(ERROR, name, f"not accepting connections: {ls.not_accepting}")
        elif ls.undecided:
            whose = "its own devices" if ls.tenants else "every device"
            add(ERROR, name, f"{whose} would be refused: {ls.undecided}")
        for tenant in ls.tenants:
            if tenant.undecided and tenant.enabled:
                add(
                    ERROR,
                    name,
                    f"tenant {tenant.id}'s devices would be refused: {tenant.undecided}",
                )
        for cert in ls.certificates:
            _certificate_problems(add, name, cert, now)
        if ls.crl is not None:
            for src in ls.crl.sources:
                _crl_problems(add, name, src, now)
        if ls.ocsp is not None:
            _ocsp_problems(add, name, ls.ocsp, now)
        for tenant in ls.tenants:
            if tenant.ocsp is not None:
                _ocsp_problems(add, f"{name}/{tenant.id}", tenant.ocsp, now)
        down = [b for b in ls.brokers if not b.up]
        if down and len(down) == len(ls.brokers):
            add(
                ERROR,
                name,
                "every broker is down: " + "; ".join(f"{b.name} ({b.last_error})" for b in down),
            )
        else:
            for b in down:
                add(WARNING, name, f"broker {b.name} is down: {b.last_error}")
    if status.reload.last_result == "failed":
        add(ERROR, "", f"the last reload was refused: {status.reload.last_error}")
    for w in status.workers:
        if w.state != "serving":
            add(
                WARNING,
                "",
                f"worker {w.index} is {w.state}"
                + (f" (its last process {w.last_exit})" if w.last_exit else ""),
            )
    out.sort(key=lambda p: p["severity"] != ERROR)
    return out


def _crl_problems(add: Any, name: str, src: CrlSourceStatus, now: float) -> None:
    if not src.crls:
        if src.last_result == "error":
            add(ERROR, name, f"no CRL from {src.url}: {src.last_error}")
        elif not src.discovered:
            add(WARNING, name, f"no CRL from {src.url} yet")
        return
    for crl in src.crls:
        if crl.next_update is not None and crl.next_update < now:
            add(
                ERROR,
                name,
                f"the CRL of {crl.issuer} from {src.url} is past its nextUpdate "
                f"({format_timestamp(crl.next_update)})",
            )
    if src.last_result == "error":
        add(WARNING, name, f"{src.url} failing ({src.failures} in a row): {src.last_error}")


def _certificate_problems(add: Any, name: str, cert: CertificateStatus, now: float) -> None:
    what = f"the {cert.role} certificate {cert.subject} (serial {cert.serial})"
    days = cert.days_left(now)
    until = format_timestamp(cert.not_after)
    if now < cert.not_before:
        add(ERROR, name, f"{what} is not valid before {format_timestamp(cert.not_before)}")
    elif days < 0:
        add(ERROR, name, f"{what} EXPIRED on {until}")
    elif days < EXPIRY_CRITICAL_DAYS:
        add(ERROR, name, f"{what} expires in {days:.1f} days ({until})")
    elif days < EXPIRY_WARNING_DAYS:
        add(
            WARNING, name, f"{what} expires in {days:.0f} days ({format_timestamp(cert.not_after)})"
        )


def _ocsp_problems(add: Any, name: str, ocsp: OcspStatus, now: float) -> None:
    if ocsp.status is None:
        why = f": {ocsp.last_error}" if ocsp.last_error else ""
        add(ERROR, name, f"no OCSP staple for certificate {ocsp.serial}{why}")
    elif ocsp.status == "revoked":
        add(ERROR, name, f"the server certificate {ocsp.serial} is REVOKED (per its OCSP staple)")
    elif ocsp.next_update is not None and ocsp.next_update < now:
        add(ERROR, name, "the OCSP staple is past its nextUpdate")
    elif ocsp.last_result == "error":
        add(WARNING, name, f"OCSP refresh failing: {ocsp.last_error}")


def document(status: GatewayStatus) -> dict[str, Any]:
    """The JSON of ``GET /status``."""
    ready, reason = status.ready
    lag = status.reactor_lag
    return {
        "version": status.version,
        "config": status.config_path,
        "started": _ts(status.started),
        "now": _ts(status.now),
        "now_epoch": round(status.now, 3),
        "uptime_seconds": round(status.now - status.started, 1),
        "ready": {"ok": ready, "reason": reason},
        "reactor": {
            "max_lag_ms": round(status.reactor_max_lag * 1000, 1),
            "probes": lag.count if lag is not None else 0,
        },
        "reload": {
            "count": status.reload.count,
            "failures": status.reload.failures,
            "last_time": _ts(status.reload.last_time),
            "last_result": status.reload.last_result,
            "last_error": status.reload.last_error,
            "last_changes": list(status.reload.last_changes),
        },
        "draining_since": _ts(status.draining),
        "files": (
            attrs.asdict(status.files) if status.files is not None else None
        ),  # watch_files: watched, changes, applied, refused
        "problems": problems(status),
        "listeners": [_listener(ls, status.now) for ls in status.listeners],
        "history": series(status.history),
        "workers": [
            {
                "index": w.index,
                "pid": w.pid,
                "state": w.state,
                "restarts": w.restarts,
                "started": _ts(w.started),
                "active": w.active,
                "accepted": w.accepted,
                "last_exit": w.last_exit,
            }
            for w in status.workers
        ],
    }


def _listener(ls: ListenerStatus, now: float) -> dict[str, Any]:
    s = ls.stats
    refused = _by_tenant(s.tenant_refused)
    out: dict[str, Any] = {
        "name": s.listener,
        "bind": ls.bind,
        "upstream": ls.upstream,
        "tls": ls.tls,
        "accepting": ls.accepting,
        "admits_devices": ls.accepting and not ls.undecided,
        "not_admitting": ls.undecided or None,
        "certificates": [
            {
                "role": c.role,
                "subject": c.subject,
                "serial": c.serial,
                "not_before": _ts(c.not_before),
                "not_after": _ts(c.not_after),
                "days_left": round(c.days_left(now), 1),
            }
            for c in ls.certificates
        ],
        "counters": {
            "active": s.active,
            "accepted": s.accepted,
            "refused": dict(sorted(s.refused.items())),
            "closed": dict(sorted(s.closed.items())),
            "bytes_in": s.bytes_in,
            "bytes_out": s.bytes_out,
            "upstream_failures": s.upstream_failures,
            "upstream_tls_handshakes": s.upstream_tls,
            "upstream_tls_resumed": s.upstream_tls_resumed,
            "throttled": s.throttled,
            "throttled_seconds": round(s.throttled_seconds, 3),
            "acl_denied": dict(s.acl_denied),
            "disconnects_sent": dict(s.disconnects_sent),
            "sessions_by_transport": dict(sorted(s.sessions.items())),
            "sessions_by_tenant": dict(sorted(s.tenants.items())),
            "refused_by_tenant": refused,
            "refused_by_transport": dict(sorted(s.refused_transport.items())),
        },
        "brokers": [
            {
                "broker": b.name,
                "up": b.up,
                "active": b.active,
                "sessions": b.sessions,
                "failures": b.failures,
                "last_error": b.last_error,
            }
            for b in ls.brokers
        ],
        "crl": None,
        "ocsp": None,
        "client_ocsp": None,
        "auth_http": None,
        "tenants": [_tenant(t, ls, refused, now) for t in ls.tenants],
    }
    if ls.auth is not None:
        a = ls.auth
        out["auth_http"] = {
            "url": a.url,
            "answers": dict(sorted(a.counts.items())),
            "in_flight": a.in_flight,
            "cached": a.cached,
        }
    if ls.client_ocsp is not None:
        c = ls.client_ocsp
        lookups = c.hits + c.misses
        out["client_ocsp"] = {
            "answers": c.answers,
            "by_status": dict(c.by_status),
            "oldest_answer": _ts(c.oldest),
            "hits": c.hits,
            "misses": c.misses,
            "hit_ratio": round(c.hits / lookups, 4) if lookups else None,
            "decisions": dict(sorted(c.decisions.items())),
            "responders": [
                {
                    "url": r.url,
                    "requests": r.requests,
                    "failures": r.failures,
                    "in_flight": r.in_flight,
                    "queued": r.queued,
                    "last_error": r.last_error,
                }
                for r in c.responders
            ],
        }
    if ls.crl is not None:
        out["crl"] = {
            "held": ls.crl.held,
            "decisions": dict(sorted(ls.crl.counts.items())),
            "sources": [
                {
                    "url": src.url,
                    "discovered": src.discovered,
                    "crls": [
                        {
                            "issuer": c.issuer,
                            "number": c.number,
                            "this_update": _ts(c.this_update),
                            "next_update": _ts(c.next_update),
                            "entries": c.entries,
                        }
                        for c in src.crls
                    ],
                    "size": src.size,
                    "last_fetch": _ts(src.last_fetch),
                    "last_result": src.last_result,
                    "last_error": src.last_error,
                    "last_success": _ts(src.last_success),
                    "last_failure": _ts(src.last_failure),
                    "failures_in_a_row": src.failures,
                    "failures_by_kind": dict(sorted(src.failure_kinds.items())),
                    "next_refresh": _ts(src.next_refresh),
                }
                for src in ls.crl.sources
            ],
        }
    if ls.ocsp is not None:
        o = ls.ocsp
        out["ocsp"] = _ocsp(o)
    return out


def _ocsp(o: OcspStatus) -> dict[str, Any]:
    return {
        "certificate": o.certificate,
        "serial": o.serial,
        "responder": o.responder,
        "status": o.status,
        "produced_at": _ts(o.produced_at),
        "this_update": _ts(o.this_update),
        "next_update": _ts(o.next_update),
        "next_refresh": _ts(o.next_refresh),
        "last_fetch": _ts(o.last_fetch),
        "last_result": o.last_result,
        "last_error": o.last_error,
        "failures_in_a_row": o.failures,
        "failures_by_kind": dict(sorted(o.failure_kinds.items())),
        "staples_sent": o.staples_sent,
    }
