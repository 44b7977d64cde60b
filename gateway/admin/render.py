"""The gateway's status as a JSON document, its problems, and the two ways a person reads
it: the HTML status page (``GET /``) and the terminal table of ``mqttgw status``.

Pure: the status records go in, text comes out. The page and the table are both rendered
from the JSON document, so ``mqttgw status`` (which fetches ``/status``) shows exactly what
the page shows.
"""

from __future__ import annotations

import html
from typing import Any

from gateway.clock import format_timestamp
from gateway.status import CrlSourceStatus, GatewayStatus, ListenerStatus, OcspStatus

ERROR = "error"
WARNING = "warning"


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
        if ls.crl is not None:
            for src in ls.crl.sources:
                _crl_problems(add, name, src, now)
        if ls.ocsp is not None:
            _ocsp_problems(add, name, ls.ocsp, now)
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
        "problems": problems(status),
        "listeners": [_listener(ls) for ls in status.listeners],
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


def _listener(ls: ListenerStatus) -> dict[str, Any]:
    s = ls.stats
    out: dict[str, Any] = {
        "name": s.listener,
        "bind": ls.bind,
        "upstream": ls.upstream,
        "tls": ls.tls,
        "accepting": ls.accepting,
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
        out["ocsp"] = {
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
    return out


# -- the status page -----------------------------------------------------------------------

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.4em 0 1em 0; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
.problem-error { color: #fff; background: #c0392b; padding: 0.3em 0.6em; margin: 0.2em 0; }
.problem-warning { background: #f6d365; padding: 0.3em 0.6em; margin: 0.2em 0; }
.ok { color: #1e7e34; font-weight: bold; } .bad { color: #c0392b; font-weight: bold; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def render_html(doc: dict[str, Any]) -> str:
    """A page a person reads at a glance: problems first (errors in red), then each
    listener. No JavaScript; it refreshes itself every 30 s."""
    ready = doc["ready"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta http-equiv='refresh' content='30'>",
        f"<title>mqttgw status</title><style>{_STYLE}</style></head><body>",
        "<h1>mqttgw status</h1>",
        f"<p>{_e(doc['config'])} · up {_e(doc['uptime_seconds'])} s · at {_e(doc['now'])} · ",
        "<span class='ok'>ready</span>"
        if ready["ok"]
        else f"<span class='bad'>not ready: {_e(ready['reason'])}</span>",
        "</p>",
    ]
    if doc["problems"]:
        parts.append("<h2 id='problems'>Problems</h2>")
        for p in doc["problems"]:
            where = f"{p['listener']}: " if p["listener"] else ""
            parts.append(
                f"<div class='problem-{_e(p['severity'])}'>{_e(p['severity'].upper())} "
                f"{_e(where)}{_e(p['what'])}</div>"
            )
    else:
        parts.append("<p class='ok' id='problems'>No problems.</p>")
    for ls in doc["listeners"]:
        c = ls["counters"]
        parts.append(f"<h2>Listener {_e(ls['name'])}</h2>")
        parts.append(
            _table(
                [
                    ("bind", ls["bind"]),
                    ("upstream", ls["upstream"]),
                    ("TLS", ls["tls"]),
                    ("accepting", "yes" if ls["accepting"] else "NO"),
                    ("active", c["active"]),
                    ("accepted", c["accepted"]),
                    ("refused", _pairs(c["refused"])),
                    ("sessions ended", _pairs(c["closed"])),
                    ("bytes in / out", f"{c['bytes_in']} / {c['bytes_out']}"),
                    ("upstream connect failures", c["upstream_failures"]),
                    (
                        "brokers",
                        "; ".join(
                            f"{b['broker']} {'up' if b['up'] else 'DOWN'} ({b['active']} active)"
                            for b in ls.get("brokers", [])
                        ),
                    ),
                ]
            )
        )
        if ls["crl"] is not None:
            parts.append(_crl_table(ls["crl"]))
        if ls["ocsp"] is not None:
            o = ls["ocsp"]
            parts.append("<h3>OCSP staple</h3>")
            parts.append(
                _table(
                    [
                        ("certificate", f"{o['certificate']} (serial {o['serial']})"),
                        ("responder", o["responder"]),
                        ("status", o["status"] or "NONE"),
                        ("producedAt", o["produced_at"]),
                        ("nextUpdate", o["next_update"]),
                        ("next refresh", o["next_refresh"]),
                        ("last result", o["last_result"]),
                        ("last error", o["last_error"]),
                        ("staples sent", o["staples_sent"]),
                    ]
                )
            )
    if doc.get("workers"):
        parts.append("<h2>Workers</h2>")
        parts.append(
            _table(
                [
                    (
                        f"worker {w['index']}",
                        f"{w['state']} pid {w['pid']}, {w['active']} connection(s) now, "
                        f"{w['accepted']} accepted, {w['restarts']} restart(s)"
                        + (f", last exit: {w['last_exit']}" if w["last_exit"] else ""),
                    )
                    for w in doc["workers"]
                ]
            )
        )
    reload = doc["reload"]
    parts.append("<h2>Reloads</h2>")
    parts.append(
        _table(
            [
                ("applied", reload["count"]),
                ("refused", reload["failures"]),
                ("last", f"{reload['last_time'] or '-'} {reload['last_result'] or ''}"),
                ("last error", reload["last_error"]),
                ("last changes", "; ".join(reload["last_changes"])),
            ]
        )
    )
    parts.append("</body></html>")
    return "".join(parts)


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in counts.items()) or "-"


def _crl_table(crl: dict[str, Any]) -> str:
    head = (
        "<tr><th>source</th><th>issuer</th><th>number</th><th>thisUpdate</th>"
        "<th>nextUpdate</th><th>entries</th><th>last fetch</th><th>last result</th>"
        "<th>last error</th><th>next refresh</th></tr>"
    )
    rows = []
    for src in crl["sources"]:
        crls = src["crls"] or [None]
        for c in crls:
            cells = [
                src["url"],
                c["issuer"] if c else "-",
                c["number"] if c else "-",
                c["this_update"] if c else "-",
                c["next_update"] if c else "-",
                c["entries"] if c else "-",
                src["last_fetch"],
                src["last_result"],
                src["last_error"],
                src["next_refresh"],
            ]
            rows.append("<tr>" + "".join(f"<td>{_e(x)}</td>" for x in cells) + "</tr>")
    return (
        f"<h3>CRLs ({_e(crl['held'])} held; decisions {_e(_pairs(crl['decisions']))})</h3>"
        f"<table>{head}{''.join(rows)}</table>"
    )


# -- the terminal ----------------------------------------------------------------------------


def render_text(doc: dict[str, Any]) -> str:
    """``mqttgw status``: problems first, then a table per listener."""
    ready = doc["ready"]
    lines = [
        f"mqttgw {doc['version']} · {doc['config']} · up {doc['uptime_seconds']}s · "
        + ("ready" if ready["ok"] else f"NOT READY: {ready['reason']}")
    ]
    if doc["problems"]:
        lines.append("")
        for p in doc["problems"]:
            where = f"{p['listener']}: " if p["listener"] else ""
            lines.append(f"{p['severity'].upper():8} {where}{p['what']}")
    for ls in doc["listeners"]:
        c = ls["counters"]
        lines += [
            "",
            f"listener {ls['name']}  {ls['bind']} -> {ls['upstream']}  tls {ls['tls']}  "
            + ("accepting" if ls["accepting"] else "NOT ACCEPTING"),
            f"  active {c['active']}  accepted {c['accepted']}  refused {_pairs(c['refused'])}",
            f"  sessions ended {_pairs(c['closed'])}  bytes in {c['bytes_in']} "
            f"out {c['bytes_out']}",
        ]
        brokers = ls.get("brokers", [])
        if len(brokers) > 1 or any(not b["up"] for b in brokers):
            lines.append(
                "  brokers "
                + "  ".join(
                    f"{b['broker']} {'up' if b['up'] else 'DOWN'} {b['active']}" for b in brokers
                )
            )
        if ls["crl"] is not None:
            lines.append(f"  CRLs held {ls['crl']['held']}")
            for src in ls["crl"]["sources"]:
                for crl in src["crls"] or [None]:
                    detail = (
                        f"#{crl['number']} entries {crl['entries']} next {crl['next_update']}"
                        if crl
                        else "none"
                    )
                    lines.append(
                        f"    {src['url']}  {detail}  last {src['last_result']}"
                        + (f" ({src['last_error']})" if src["last_error"] else "")
                    )
        if ls["ocsp"] is not None:
            o = ls["ocsp"]
            lines.append(
                f"  OCSP {o['status'] or 'NONE'}  next update {o['next_update']}  "
                f"staples sent {o['staples_sent']}"
                + (f"  last error {o['last_error']}" if o["last_error"] else "")
            )
    workers = doc.get("workers") or []
    if workers:
        lines += ["", f"workers {sum(w['state'] == 'serving' for w in workers)}/{len(workers)}"]
        for w in workers:
            lines.append(
                f"  worker {w['index']}  pid {w['pid']}  {w['state']}  active {w['active']}  "
                f"accepted {w['accepted']}  restarts {w['restarts']}"
                + (f"  last exit: {w['last_exit']}" if w["last_exit"] else "")
            )
    return "\n".join(lines) + "\n"
