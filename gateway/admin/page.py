"""The status page (``GET /``): what a person reads at a glance, rendered from the
``/status`` document. Problems first, then an hour of charts (inline SVG, from the ring
buffer the gateway keeps in memory), then each listener. Every time is shown absolute and
relative ("12 s ago"). No JavaScript: refreshing is a link that sets ``?refresh=N``."""

from __future__ import annotations

import html
from typing import Any

from gateway.admin.document import in_words, pairs
from gateway.clock import duration, parse_timestamp, relative

REFRESH_CHOICES = (0, 10, 30, 60)  # seconds; 0: off

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 80em; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
h3 { font-size: 1em; }
table { border-collapse: collapse; margin: 0.4em 0 1em 0; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; font-weight: normal; }
.t { white-space: nowrap; } .rel { color: #666; white-space: nowrap; }
.problem-error { color: #fff; background: #c0392b; padding: 0.3em 0.6em; margin: 0.2em 0; }
.problem-warning { background: #f6d365; padding: 0.3em 0.6em; margin: 0.2em 0; }
.ok { color: #1e7e34; font-weight: bold; } .bad { color: #c0392b; font-weight: bold; }
.bar { color: #444; } .bar a { margin: 0 0.2em; } .current { font-weight: bold; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; }
.chart { border: 1px solid #ddd; padding: 0.4em; } .chart p { margin: 0.2em 0; font-size: 0.9em; }
.legend span { margin-right: 0.8em; white-space: nowrap; }
"""

_COLORS = ("#c0392b", "#e67e22", "#8e44ad", "#2c3e50", "#d35400", "#7f8c8d")


class Html(str):
    """Text that is already HTML (not escaped again by ``_table``)."""


def _e(value: Any) -> str:
    if isinstance(value, Html):
        return str(value)
    return html.escape("-" if value is None else str(value))


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _when(text: str | None, now: float) -> Html:
    """An absolute time and, beside it, how long ago or ahead it is."""
    ts = parse_timestamp(text)
    if ts is None:
        return Html("-")
    return Html(
        f"<span class='t'>{html.escape(str(text))}</span> "
        f"<span class='rel'>({html.escape(relative(ts - now))})</span>"
    )


def render_html(doc: dict[str, Any], refresh: int = 0) -> str:
    """The page; ``refresh``: seconds between automatic reloads (0: none)."""
    now = float(doc.get("now_epoch") or 0.0)
    ready = doc["ready"]
    head = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"]
    if refresh:
        head.append(f"<meta http-equiv='refresh' content='{int(refresh)}'>")
    head.append(f"<title>mqttgw status</title><style>{_STYLE}</style></head><body>")
    parts = head + [
        f"<h1>mqttgw {_e(doc['version'])}</h1>",
        "<p class='bar'>",
        "<span class='ok' id='ready'>ready</span>"
        if ready["ok"]
        else f"<span class='bad' id='ready'>not ready: {_e(ready['reason'])}</span>",
        f" · {_e(doc['config'])} · up {_e(duration(doc['uptime_seconds']))}",
        f" · worst reactor stall {_e(doc['reactor']['max_lag_ms'])} ms",
        f" · {_when(doc['now'], now)}</p>",
        "<p class='bar'>The same as data: <a href='/status'>/status</a> (JSON) · "
        "<a href='/metrics'>/metrics</a> (Prometheus) · <a href='/ready'>/ready</a>"
        " · auto-refresh:",
    ]
    for choice in REFRESH_CHOICES:
        label = "off" if choice == 0 else f"{choice} s"
        cls = " class='current'" if choice == refresh else ""
        parts.append(f"<a{cls} href='/?refresh={choice}'>{label}</a>")
    parts.append("</p>")
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
    parts.append(_charts(doc.get("history") or {}))
    for ls in doc["listeners"]:
        parts.append(_listener(ls, now))
    if doc.get("workers"):
        parts.append("<h2>Worker processes</h2>")
        rows = []
        for w in doc["workers"]:
            text = (
                f"{w['state']}, pid {_e(w['pid'])}, {w['active']} connection(s) now, "
                f"{w['accepted']} accepted, {w['restarts']} restart(s)"
                + (f", last exit: {w['last_exit']}" if w["last_exit"] else "")
            )
            rows.append((f"worker {w['index']}", text))
        parts.append(_table(rows))
    reload = doc["reload"]
    parts.append("<h2>Reloads</h2>")
    parts.append(
        _table(
            [
                ("applied", reload["count"]),
                ("refused", reload["failures"]),
                ("last", _when(reload["last_time"], now)),
                ("last result", reload["last_result"]),
                ("last error", reload["last_error"]),
                ("last changes", "; ".join(reload["last_changes"]) or None),
            ]
        )
    )
    parts.append("</body></html>")
    return "".join(parts)


def _listener(ls: dict[str, Any], now: float) -> str:
    c = ls["counters"]
    admits = ls.get("admits_devices", ls["accepting"])
    state = "yes" if admits else ("NO: " + (ls.get("not_admitting") or "not accepting"))
    rows: list[tuple[str, Any]] = [
        ("address", ls["bind"]),
        ("broker", ls["upstream"]),
        ("TLS", ls["tls"]),
        ("admits devices", state),
        ("connections open", c["active"]),
        ("sessions relayed", c["accepted"]),
        ("sessions by transport", pairs(c.get("sessions_by_transport", {}))),
        ("connections refused", pairs(c["refused"])),
        ("refused after the handshake, by transport", pairs(c.get("refused_by_transport", {}))),
        ("sessions ended, by who ended them", pairs(c["closed"])),
        ("bytes from devices / to devices", f"{c['bytes_in']} / {c['bytes_out']}"),
        ("broker connections that failed", c["upstream_failures"]),
        (
            "brokers",
            "; ".join(
                f"{b['broker']} {'up' if b['up'] else 'DOWN'} ({b['active']} sessions)"
                for b in ls.get("brokers", [])
            ),
        ),
    ]
    for cert in ls.get("certificates", []):
        rows.append(
            (
                f"{cert['role']} certificate",
                Html(
                    f"{_e(cert['subject'])}, serial {_e(cert['serial'])}, valid until "
                    f"{_when(cert['not_after'], now)}"
                ),
            )
        )
    out = [f"<h2>Listener {_e(ls['name'])}</h2>", _table(rows)]
    if ls.get("tenants"):
        out.append(_tenant_table(ls["tenants"], now))
    if ls["crl"] is not None:
        out.append(_crl_table(ls["crl"], now))
    if ls.get("auth_http") is not None:
        a = ls["auth_http"]
        rows = [("authorization hook", f"{_e(a['url'])}: {in_words(a['answers'])}")]
        out.append(_table(rows))
    if ls.get("client_ocsp") is not None:
        c = ls["client_ocsp"]
        ratio = "-" if c["hit_ratio"] is None else f"{100 * c['hit_ratio']:.1f} %"
        rows = [
            ("answers held", f"{c['answers']} ({pairs(c['by_status'])})"),
            ("oldest answer", _when(c["oldest_answer"], now)),
            (
                "handshakes decided from the cache",
                f"{c['hits']} of {c['hits'] + c['misses']} ({ratio})",
            ),
            ("devices", in_words(c["decisions"])),
        ]
        for r in c["responders"]:
            rows.append(
                (
                    f"responder {r['url']}",
                    f"{r['requests']} requests, {r['failures']} failed, {r['in_flight']} in "
                    f"flight, {r['queued']} queued"
                    + (f"; last error {r['last_error']}" if r["last_error"] else ""),
                )
            )
        out.append("<h3>OCSP checking of client certificates</h3>")
        out.append(_table(rows))
    if ls["ocsp"] is not None:
        o = ls["ocsp"]
        out.append("<h3>OCSP staple of the server certificate</h3>")
        out.append(
            _table(
                [
                    ("certificate", f"{o['certificate']} (serial {o['serial']})"),
                    ("responder", o["responder"]),
                    ("stapled answer", o["status"] or "none (nothing is stapled)"),
                    ("produced", _when(o["produced_at"], now)),
                    ("valid until (nextUpdate)", _when(o["next_update"], now)),
                    ("next refresh", _when(o["next_refresh"], now)),
                    ("last refresh", o["last_result"]),
                    ("last error", o["last_error"]),
                    ("staples sent", o["staples_sent"]),
                ]
            )
        )
    return "".join(out)


def _tenant_table(tenants: list[dict[str, Any]], now: float) -> str:
    head = (
        "<tr><th>tenant</th><th>server names</th><th>admits devices</th><th>sessions</th>"
        "<th>refused</th><th>certificate valid until</th><th>own CAs</th>"
        "<th>CRL policy</th><th>its CRL sources</th><th>hook</th><th>OCSP staple</th></tr>"
    )
    rows = []
    for t in tenants:
        state = "yes" if t["admits_devices"] else f"NO: {t['not_admitting']}"
        sources = "; ".join(
            f"{s['url']} ({s['crls_held']} held"
            + (f", {s['last_error']}" if s["last_error"] else "")
            + ")"
            for s in t["crl_sources"]
        )
        cells = [
            t["id"],
            ", ".join(t["server_names"]),
            state,
            t["sessions"],
            pairs(t["refused"]),
            _when(t["certificate_not_after"], now),
            "yes" if t["own_cas"] else "the listener's",
            t["crl_expired_policy"],
            sources or None,
            t["auth_http_url"],
            _staple_words(t.get("ocsp"), now),
        ]
        rows.append("<tr>" + "".join(f"<td>{_e(x)}</td>" for x in cells) + "</tr>")
    return f"<h3>Tenants</h3><table id='tenants'>{head}{''.join(rows)}</table>"


def _staple_words(ocsp: dict[str, Any] | None, now: float) -> Any:
    if ocsp is None:
        return None
    if not ocsp["status"]:
        return f"none ({ocsp['last_error'] or 'not fetched yet'})"
    return Html(f"{_e(ocsp['status'])}, until {_when(ocsp['next_update'], now)}")


def _crl_table(crl: dict[str, Any], now: float) -> str:
    head = (
        "<tr><th>source</th><th>issuer</th><th>number</th><th>issued (thisUpdate)</th>"
        "<th>valid until (nextUpdate)</th><th>revoked serials</th><th>last fetch</th>"
        "<th>result</th><th>last error</th><th>next fetch</th></tr>"
    )
    rows = []
    for src in crl["sources"]:
        for c in src["crls"] or [None]:
            cells = [
                src["url"],
                c["issuer"] if c else "no CRL held",
                c["number"] if c else None,
                _when(c["this_update"], now) if c else None,
                _when(c["next_update"], now) if c else None,
                c["entries"] if c else None,
                _when(src["last_fetch"], now),
                src["last_result"],
                src["last_error"],
                _when(src["next_refresh"], now),
            ]
            rows.append("<tr>" + "".join(f"<td>{_e(x)}</td>" for x in cells) + "</tr>")
    return (
        f"<h3>Revocation: {_e(crl['held'])} CRL(s) held; devices "
        f"{_e(in_words(crl['decisions']))}</h3><table>{head}{''.join(rows)}</table>"
    )


# -- charts -----------------------------------------------------------------------------------

_W, _H, _PAD = 360, 90, 4
_HOUR = 3600.0


def _points(ago: list[float], values: list[Any], top: float) -> str:
    out = []
    for a, v in zip(ago, values, strict=False):
        if v is None:
            continue
        x = _PAD + (_W - 2 * _PAD) * (1 - min(a, _HOUR) / _HOUR)
        y = _H - _PAD - (_H - 2 * _PAD) * (float(v) / top if top else 0.0)
        out.append(f"{x:.1f},{y:.1f}")
    return " ".join(out)


def _chart(title: str, ago: list[float], lines: list[tuple[str, str, list[Any]]], unit: str) -> str:
    values = [float(v) for _, _, series in lines for v in series if v is not None]
    top = max(values, default=0.0) or 1.0
    polylines = "".join(
        f"<polyline fill='none' stroke='{color}' stroke-width='1.5' "
        f"points='{_points(ago, series, top)}'/>"
        for _, color, series in lines
    )
    legend = "".join(
        f"<span style='color:{color}'>&#9632; {html.escape(name)}: "
        f"{html.escape(_last(series))}</span>"
        for name, color, series in lines
    )
    return (
        f"<div class='chart'><p><b>{html.escape(title)}</b> (top {top:g} {html.escape(unit)})"
        f"</p><svg role='img' aria-label='{html.escape(title)}' width='{_W}' height='{_H}' "
        f"viewBox='0 0 {_W} {_H}'><rect x='0' y='0' width='{_W}' height='{_H}' fill='#fafafa' "
        f"stroke='#ddd'/>{polylines}</svg><p class='legend'>{legend}</p>"
        "<p class='rel'>1 h ago &#8594; now</p></div>"
    )


def _last(series: list[Any]) -> str:
    present = [v for v in series if v is not None]
    return "-" if not present else f"{present[-1]:g} now"


def _charts(history: dict[str, Any]) -> str:
    ago = history.get("ago") or []
    every = history.get("interval", 10)
    if not ago:
        return (
            "<h2>The last hour</h2><p class='rel'>Collecting: a point every "
            f"{every:g} s; the charts appear with the second one.</p>"
        )
    refused = sorted(history.get("refused", {}).items(), key=lambda kv: -sum(kv[1]))[: len(_COLORS)]
    per_interval = f"per {every:g} s"
    charts = [
        _chart(
            "Sessions relayed and connections refused",
            ago,
            [("relayed", "#1e7e34", history["accepted"])]
            + [(f"refused: {r}", _COLORS[i], s) for i, (r, s) in enumerate(refused)],
            per_interval,
        ),
        _chart(
            "TLS handshakes",
            ago,
            [("handshakes", "#2471a3", history["handshakes_per_second"])],
            "per second",
        ),
        _chart("Connections open", ago, [("open", "#117a65", history["active"])], "connections"),
    ]
    ages = history.get("crl_age") or []
    if any(a is not None for a in ages):
        minutes = [None if a is None else round(a / 60, 1) for a in ages]
        charts.append(
            _chart("Age of the oldest CRL in force", ago, [("age", "#6c3483", minutes)], "min")
        )
    return "<h2>The last hour</h2><div class='charts'>" + "".join(charts) + "</div>"
