"""``mqttgw status``: the ``/status`` document as a terminal table (plain words; a value
that is not there reads ``-``, never ``None``)."""

from __future__ import annotations

from typing import Any

from gateway.admin.document import in_words, pairs


def _v(value: Any) -> str:
    return "-" if value is None else str(value)


def render_text(doc: dict[str, Any]) -> str:
    """Problems first, then a table per listener."""
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
        state = "accepting" if ls["accepting"] else "NOT ACCEPTING"
        if ls["accepting"] and not ls.get("admits_devices", True):
            state = "accepting, but REFUSING EVERY DEVICE"
        lines += [
            "",
            f"listener {ls['name']}  {ls['bind']} -> {ls['upstream']}  tls {ls['tls']}  {state}",
            f"  active {c['active']}  accepted {c['accepted']}  refused {pairs(c['refused'])}",
            f"  sessions ended {pairs(c['closed'])}  bytes in {c['bytes_in']} out {c['bytes_out']}",
        ]
        for cert in ls.get("certificates", []):
            lines.append(
                f"  {cert['role']} certificate {cert['subject']} serial {cert['serial']}  "
                f"valid until {cert['not_after']} ({cert['days_left']:.0f} days left)"
            )
        for t in ls.get("tenants", []):
            state = "" if t["admits_devices"] else f"  NOT ADMITTING: {t['not_admitting']}"
            lines.append(
                f"  tenant {t['id']} ({', '.join(t['server_names'])})  sessions {t['sessions']}"
                f"  refused {pairs(t['refused'])}  certificate until "
                f"{_v(t['certificate_not_after'])}" + state
            )
            if t.get("ocsp") is not None:
                o = t["ocsp"]
                lines.append(
                    f"    OCSP staple {_v(o['status'])}, next update {_v(o['next_update'])}"
                    + (f"; last error {o['last_error']}" if o["last_error"] else "")
                )
            for s in t["crl_sources"]:
                lines.append(
                    f"    {s['url']}  {s['crls_held']} CRL(s) held"
                    + (f" ({s['last_error']})" if s["last_error"] else "")
                )
        brokers = ls.get("brokers", [])
        if len(brokers) > 1 or any(not b["up"] for b in brokers):
            lines.append(
                "  brokers "
                + "  ".join(
                    f"{b['broker']} {'up' if b['up'] else 'DOWN'} {b['active']}" for b in brokers
                )
            )
        if ls["crl"] is not None:
            crl = ls["crl"]
            lines.append(f"  CRLs held {crl['held']}; devices {in_words(crl['decisions'])}")
            for src in crl["sources"]:
                for held in src["crls"] or [None]:
                    detail = (
                        f"#{_v(held['number'])} entries {held['entries']} "
                        f"next update {_v(held['next_update'])}"
                        if held
                        else "no CRL held"
                    )
                    lines.append(
                        f"    {src['url']}  {detail}  last fetch {_v(src['last_result'])}"
                        + (f" ({src['last_error']})" if src["last_error"] else "")
                    )
        if ls.get("auth_http") is not None:
            a = ls["auth_http"]
            lines.append(f"  auth_http {a['url']}: {in_words(a['answers'])}")
        if ls.get("client_ocsp") is not None:
            c = ls["client_ocsp"]
            lines.append(
                f"  client OCSP: {c['answers']} answer(s) ({pairs(c['by_status'])}), "
                f"{c['hits']} hits / {c['misses']} misses; devices {in_words(c['decisions'])}"
            )
            for r in c["responders"]:
                lines.append(
                    f"    {r['url']}  {r['requests']} requests, {r['failures']} failed"
                    + (f" ({r['last_error']})" if r["last_error"] else "")
                )
        if ls["ocsp"] is not None:
            o = ls["ocsp"]
            staple = (
                f"OCSP staple {o['status']}, next update {_v(o['next_update'])}"
                if o["status"]
                else "OCSP: no staple"
            )
            lines.append(
                f"  {staple}, {o['staples_sent']} sent"
                + (f"; last error {o['last_error']}" if o["last_error"] else "")
            )
    workers = doc.get("workers") or []
    if workers:
        lines += ["", f"workers {sum(w['state'] == 'serving' for w in workers)}/{len(workers)}"]
        for w in workers:
            lines.append(
                f"  worker {w['index']}  pid {_v(w['pid'])}  {w['state']}  active {w['active']}  "
                f"accepted {w['accepted']}  restarts {w['restarts']}"
                + (f"  last exit: {w['last_exit']}" if w["last_exit"] else "")
            )
    return "\n".join(lines) + "\n"
