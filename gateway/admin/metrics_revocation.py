"""Prometheus metric families of revocation checking: CRL sources and their CRLs, the OCSP
staple, OCSP checking of client certificates (read from the status at scrape time, labels
bounded by the configured sources and responders)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)

from gateway.reasons import OcspVerdict
from gateway.status import GatewayStatus, HistogramSnapshot

# The staple's status: the verdicts a staple can carry, and none held.
OCSP_STATUSES = (OcspVerdict.GOOD.value, OcspVerdict.REVOKED.value, "none")


def buckets(h: HistogramSnapshot) -> list[tuple[str, float]]:
    out = [(repr(float(b)), float(c)) for b, c in zip(h.bounds, h.cumulative, strict=False)]
    out.append(("+Inf", float(h.count)))
    return out


def family(kind: type, name: str, doc: str, labels: list[str], **kw: Any) -> Any:
    return kind(name, doc, labels=labels, **kw)


def revocation(status: GatewayStatus) -> Iterator[Metric]:
    src_labels = ["listener", "url"]
    crl_labels = ["listener", "url", "issuer"]
    entries = family(
        GaugeMetricFamily, "mqttgw_crl_entries", "Revoked serials in the CRL.", crl_labels
    )
    this_update = family(
        GaugeMetricFamily,
        "mqttgw_crl_this_update_timestamp_seconds",
        "thisUpdate of the CRL held.",
        crl_labels,
    )
    next_update = family(
        GaugeMetricFamily,
        "mqttgw_crl_next_update_timestamp_seconds",
        "nextUpdate of the CRL held (alert when time() passes it).",
        crl_labels,
    )
    success = family(
        GaugeMetricFamily,
        "mqttgw_crl_last_success_timestamp_seconds",
        "Last fetch that gave a valid CRL (0: never).",
        src_labels,
    )
    failure = family(
        GaugeMetricFamily,
        "mqttgw_crl_last_failure_timestamp_seconds",
        "Last failed fetch (0: never).",
        src_labels,
    )
    failures = family(
        CounterMetricFamily,
        "mqttgw_crl_fetch_failures",
        "Failed CRL fetches, by kind (connect, timeout, http_status, too_large, garbage, ...).",
        ["listener", "url", "kind"],
    )
    ocsp_status = family(
        GaugeMetricFamily,
        "mqttgw_ocsp_status",
        "1 for the status of the staple held (good, revoked, none).",
        ["listener", "status"],
    )
    ocsp_next = family(
        GaugeMetricFamily,
        "mqttgw_ocsp_next_update_timestamp_seconds",
        "nextUpdate of the staple held (0: none).",
        ["listener"],
    )
    staples = family(
        CounterMetricFamily,
        "mqttgw_ocsp_staples_sent",
        "Handshakes that received the staple.",
        ["listener"],
    )
    ocsp_failures = family(
        CounterMetricFamily,
        "mqttgw_ocsp_refresh_failures",
        "Failed OCSP refreshes, by kind.",
        ["listener", "kind"],
    )
    for ls in status.listeners:
        name = ls.stats.listener
        if ls.crl is not None:
            for src in ls.crl.sources:
                for crl in src.crls:
                    labels = [name, src.url, crl.issuer]
                    entries.add_metric(labels, crl.entries)
                    this_update.add_metric(labels, crl.this_update)
                    if crl.next_update is not None:
                        next_update.add_metric(labels, crl.next_update)
                success.add_metric([name, src.url], src.last_success or 0)
                failure.add_metric([name, src.url], src.last_failure or 0)
                for kind, count in sorted(src.failure_kinds.items()):
                    failures.add_metric([name, src.url, kind], count)
        if ls.ocsp is not None:
            o = ls.ocsp
            held = o.status or "none"
            for st in OCSP_STATUSES:
                ocsp_status.add_metric([name, st], 1 if st == held else 0)
            ocsp_next.add_metric([name], o.next_update or 0)
            staples.add_metric([name], o.staples_sent)
            for kind, count in sorted(o.failure_kinds.items()):
                ocsp_failures.add_metric([name, kind], count)
    yield from (entries, this_update, next_update, success, failure, failures)
    yield from (ocsp_status, ocsp_next, staples, ocsp_failures)
    yield from client_ocsp(status)


def client_ocsp(status: GatewayStatus) -> Iterator[Metric]:
    answers = family(
        GaugeMetricFamily,
        "mqttgw_client_ocsp_answers",
        "OCSP answers about client certificates held, by status (good, revoked, unknown).",
        ["listener", "status"],
    )
    oldest = family(
        GaugeMetricFamily,
        "mqttgw_client_ocsp_oldest_answer_timestamp_seconds",
        "thisUpdate of the oldest answer held (0: none).",
        ["listener"],
    )
    lookups = family(
        CounterMetricFamily,
        "mqttgw_client_ocsp_lookups",
        "Handshake-time lookups: hit (an answer held decided), miss (the responder was asked).",
        ["listener", "result"],
    )
    requests = family(
        CounterMetricFamily,
        "mqttgw_client_ocsp_requests",
        "Requests to each OCSP responder about client certificates.",
        ["listener", "responder"],
    )
    failures = family(
        CounterMetricFamily,
        "mqttgw_client_ocsp_failures",
        "Requests that gave no valid answer (connect, timeout, HTTP error, bad answer).",
        ["listener", "responder"],
    )
    in_flight = family(
        GaugeMetricFamily,
        "mqttgw_client_ocsp_in_flight",
        "Requests in flight to each responder (at most ocsp_client_max_requests).",
        ["listener", "responder"],
    )
    for ls in status.listeners:
        c = ls.client_ocsp
        if c is None:
            continue
        name = ls.stats.listener
        for st in (OcspVerdict.GOOD, OcspVerdict.REVOKED, OcspVerdict.UNKNOWN):
            answers.add_metric([name, st], c.by_status.get(st, 0))
        oldest.add_metric([name], c.oldest or 0)
        lookups.add_metric([name, "hit"], c.hits)
        lookups.add_metric([name, "miss"], c.misses)
        for r in c.responders:
            requests.add_metric([name, r.url], r.requests)
            failures.add_metric([name, r.url], r.failures)
            in_flight.add_metric([name, r.url], r.in_flight)
    yield from (answers, oldest, lookups, requests, failures, in_flight)
    yield from auth_http(status)


def auth_http(status: GatewayStatus) -> Iterator[Metric]:
    decisions = family(
        CounterMetricFamily,
        "mqttgw_auth_http_decisions",
        "CONNECTs decided by the authorization hook: allow, deny, failed (the failure "
        "policy decided), cached (from an answer held), shared (a request in flight joined).",
        ["listener", "decision"],
    )
    in_flight = family(
        GaugeMetricFamily,
        "mqttgw_auth_http_in_flight",
        "Requests in flight to the hook (one process: a master counts none).",
        ["listener"],
    )
    for ls in status.listeners:
        a = ls.auth
        if a is None:
            continue
        name = ls.stats.listener
        for kind in ("allow", "deny", "failed", "cached", "shared"):
            decisions.add_metric([name, kind], a.counts.get(kind, 0))
        in_flight.add_metric([name], a.in_flight)
    yield from (decisions, in_flight)
