"""Prometheus metrics, read from the status records at scrape time.

Nothing here runs on the hot path: connections update plain counters and lock-free
histograms (``gateway.status``); a scrape turns the current ``GatewayStatus`` into metric
families. Labels stay bounded: listener, refusal reason, closed_by, direction, CRL source URL
and error kind, OCSP status; never a client address, id or certificate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from gateway.reasons import Reason
from gateway.status import GatewayStatus, HistogramSnapshot

# Every refusal reason the gateway has (``gateway.reasons.Reason``), exported at 0 before it
# first happens, so that rate() and alerts work from the start.
REASONS = tuple(reason.value for reason in Reason)
CLOSED_BY = ("client", "broker", "revoked", "shutdown", "reload")
OCSP_STATUSES = ("good", "revoked", "none")


def _buckets(h: HistogramSnapshot) -> list[tuple[str, float]]:
    out = [(repr(float(b)), float(c)) for b, c in zip(h.bounds, h.cumulative, strict=False)]
    out.append(("+Inf", float(h.count)))
    return out


class GatewayCollector(Collector):
    """Collects from ``status()`` (the gateway's ``GatewayStatus``) at each scrape."""

    def __init__(self, status: Callable[[], GatewayStatus]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        yield from _connections(status)
        yield from _revocation(status)
        yield from _process(status)


def _family(kind: type, name: str, doc: str, labels: list[str], **kw: Any) -> Any:
    return kind(name, doc, labels=labels, **kw)


def _connections(status: GatewayStatus) -> Iterator[Metric]:
    L = ["listener"]
    accepted = _family(
        CounterMetricFamily,
        "mqttgw_connections_accepted",
        "Connections whose CONNECT was forwarded to the broker.",
        L,
    )
    refused = _family(
        CounterMetricFamily,
        "mqttgw_connections_refused",
        "Connections refused, by reason (before TLS, in the handshake, or after it).",
        ["listener", "reason"],
    )
    active = _family(GaugeMetricFamily, "mqttgw_connections_active", "Open connections.", L)
    closed = _family(
        CounterMetricFamily,
        "mqttgw_sessions_closed",
        "Relayed sessions ended, by who ended them.",
        ["listener", "closed_by"],
    )
    revoked_live = _family(
        CounterMetricFamily,
        "mqttgw_sessions_revoked",
        "Live sessions closed because a CRL update revoked their certificate.",
        L,
    )
    relayed = _family(
        CounterMetricFamily,
        "mqttgw_relayed_bytes",
        "Bytes relayed after the CONNECT: in = device to broker, out = broker to device.",
        ["listener", "direction"],
    )
    handshake = _family(
        HistogramMetricFamily,
        "mqttgw_handshake_duration_seconds",
        "From TCP accept to the end of the TLS handshake, completed handshakes.",
        L,
    )
    upstream = _family(
        HistogramMetricFamily,
        "mqttgw_upstream_connect_duration_seconds",
        "Time to open the broker connection.",
        L,
    )
    upstream_failures = _family(
        CounterMetricFamily,
        "mqttgw_upstream_connect_failures",
        "Broker connections that could not be opened.",
        L,
    )
    upstream_tls = _family(
        CounterMetricFamily,
        "mqttgw_upstream_tls_handshakes",
        "TLS handshakes to brokers (upstream_tls).",
        ["listener", "resumed"],
    )
    throttled = _family(
        CounterMetricFamily,
        "mqttgw_throttled",
        "Times a device's PUBLISH was held for its messages_rate or bytes_rate.",
        L,
    )
    throttled_seconds = _family(
        CounterMetricFamily,
        "mqttgw_throttled_seconds",
        "The time those PUBLISHes were held, added up.",
        L,
    )
    acl_denied = _family(
        CounterMetricFamily,
        "mqttgw_acl_denied",
        "PUBLISHes and SUBSCRIBE filters the acl_file's rules denied, by the line that "
        "decided (default: none matched).",
        ["listener", "packet", "rule"],
    )
    disconnects = _family(
        CounterMetricFamily,
        "mqttgw_disconnects_sent",
        "MQTT 5 DISCONNECTs the gateway sent before closing a session, by reason code.",
        ["listener", "reason_code"],
    )
    accepting = _family(
        GaugeMetricFamily,
        "mqttgw_listener_accepting",
        "1 when the listener accepts connections (first CRL round done).",
        L,
    )
    for ls in status.listeners:
        s = ls.stats
        name = s.listener
        accepted.add_metric([name], s.accepted)
        for reason in sorted(set(REASONS) | set(s.refused)):
            refused.add_metric([name, reason], s.refused.get(reason, 0))
        active.add_metric([name], s.active)
        for by in sorted(set(CLOSED_BY) | set(s.closed)):
            closed.add_metric([name, by], s.closed.get(by, 0))
        revoked_live.add_metric([name], s.refused.get("revoked_live", 0))
        relayed.add_metric([name, "in"], s.bytes_in)
        relayed.add_metric([name, "out"], s.bytes_out)
        if s.handshake_seconds is not None:
            h = s.handshake_seconds
            handshake.add_metric([name], _buckets(h), h.total)
        if s.upstream_connect_seconds is not None:
            h = s.upstream_connect_seconds
            upstream.add_metric([name], _buckets(h), h.total)
        upstream_failures.add_metric([name], s.upstream_failures)
        upstream_tls.add_metric([name, "yes"], s.upstream_tls_resumed)
        upstream_tls.add_metric([name, "no"], s.upstream_tls - s.upstream_tls_resumed)
        accepting.add_metric([name], 1 if ls.accepting else 0)
        throttled.add_metric([name], s.throttled)
        throttled_seconds.add_metric([name], s.throttled_seconds)
        for key, count in sorted(s.acl_denied.items()):
            what, _, rule = key.partition(" ")
            acl_denied.add_metric([name, what, rule], count)
        for code, count in sorted(s.disconnects_sent.items()):
            disconnects.add_metric([name, code], count)
    yield from (accepted, refused, active, closed, revoked_live, relayed, handshake, upstream)
    yield from (upstream_failures, upstream_tls, accepting, throttled, throttled_seconds)
    yield acl_denied
    yield disconnects
    broker_up = _family(
        GaugeMetricFamily,
        "mqttgw_broker_up",
        "1 when the broker is healthy.",
        ["listener", "broker"],
    )
    broker_active = _family(
        GaugeMetricFamily,
        "mqttgw_broker_sessions_active",
        "Sessions relayed to the broker now.",
        ["listener", "broker"],
    )
    broker_failures = _family(
        CounterMetricFamily,
        "mqttgw_broker_failures",
        "Failed connects and health checks of the broker.",
        ["listener", "broker"],
    )
    for ls in status.listeners:
        for b in ls.brokers:
            labels = [ls.stats.listener, b.name]
            broker_up.add_metric(labels, 1 if b.up else 0)
            broker_active.add_metric(labels, b.active)
            broker_failures.add_metric(labels, b.failures)
    yield from (broker_up, broker_active, broker_failures)


def _revocation(status: GatewayStatus) -> Iterator[Metric]:
    src_labels = ["listener", "url"]
    crl_labels = ["listener", "url", "issuer"]
    entries = _family(
        GaugeMetricFamily, "mqttgw_crl_entries", "Revoked serials in the CRL.", crl_labels
    )
    this_update = _family(
        GaugeMetricFamily,
        "mqttgw_crl_this_update_timestamp_seconds",
        "thisUpdate of the CRL held.",
        crl_labels,
    )
    next_update = _family(
        GaugeMetricFamily,
        "mqttgw_crl_next_update_timestamp_seconds",
        "nextUpdate of the CRL held (alert when time() passes it).",
        crl_labels,
    )
    success = _family(
        GaugeMetricFamily,
        "mqttgw_crl_last_success_timestamp_seconds",
        "Last fetch that gave a valid CRL (0: never).",
        src_labels,
    )
    failure = _family(
        GaugeMetricFamily,
        "mqttgw_crl_last_failure_timestamp_seconds",
        "Last failed fetch (0: never).",
        src_labels,
    )
    failures = _family(
        CounterMetricFamily,
        "mqttgw_crl_fetch_failures",
        "Failed CRL fetches, by kind (connect, timeout, http_status, too_large, garbage, ...).",
        ["listener", "url", "kind"],
    )
    ocsp_status = _family(
        GaugeMetricFamily,
        "mqttgw_ocsp_status",
        "1 for the status of the staple held (good, revoked, none).",
        ["listener", "status"],
    )
    ocsp_next = _family(
        GaugeMetricFamily,
        "mqttgw_ocsp_next_update_timestamp_seconds",
        "nextUpdate of the staple held (0: none).",
        ["listener"],
    )
    staples = _family(
        CounterMetricFamily,
        "mqttgw_ocsp_staples_sent",
        "Handshakes that received the staple.",
        ["listener"],
    )
    ocsp_failures = _family(
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
    yield from _client_ocsp(status)


def _client_ocsp(status: GatewayStatus) -> Iterator[Metric]:
    answers = _family(
        GaugeMetricFamily,
        "mqttgw_client_ocsp_answers",
        "OCSP answers about client certificates held, by status (good, revoked, unknown).",
        ["listener", "status"],
    )
    oldest = _family(
        GaugeMetricFamily,
        "mqttgw_client_ocsp_oldest_answer_timestamp_seconds",
        "thisUpdate of the oldest answer held (0: none).",
        ["listener"],
    )
    lookups = _family(
        CounterMetricFamily,
        "mqttgw_client_ocsp_lookups",
        "Handshake-time lookups: hit (an answer held decided), miss (the responder was asked).",
        ["listener", "result"],
    )
    requests = _family(
        CounterMetricFamily,
        "mqttgw_client_ocsp_requests",
        "Requests to each OCSP responder about client certificates.",
        ["listener", "responder"],
    )
    failures = _family(
        CounterMetricFamily,
        "mqttgw_client_ocsp_failures",
        "Requests that gave no valid answer (connect, timeout, HTTP error, bad answer).",
        ["listener", "responder"],
    )
    in_flight = _family(
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
        for st in ("good", "revoked", "unknown"):
            answers.add_metric([name, st], c.by_status.get(st, 0))
        oldest.add_metric([name], c.oldest or 0)
        lookups.add_metric([name, "hit"], c.hits)
        lookups.add_metric([name, "miss"], c.misses)
        for r in c.responders:
            requests.add_metric([name, r.url], r.requests)
            failures.add_metric([name, r.url], r.failures)
            in_flight.add_metric([name, r.url], r.in_flight)
    yield from (answers, oldest, lookups, requests, failures, in_flight)


def _process(status: GatewayStatus) -> Iterator[Metric]:
    lag = HistogramMetricFamily(
        "mqttgw_reactor_lag_seconds",
        "Each turn of the event loop: how long it could not serve connections.",
    )
    if status.reactor_lag is not None:
        lag.add_metric([], _buckets(status.reactor_lag), status.reactor_lag.total)
    yield lag
    yield GaugeMetricFamily(
        "mqttgw_reactor_lag_max_seconds",
        "The longest reactor stall since start.",
        value=status.reactor_max_lag,
    )
    yield CounterMetricFamily(
        "mqttgw_reloads", "Configuration reloads applied.", value=status.reload.count
    )
    yield CounterMetricFamily(
        "mqttgw_reload_failures",
        "Reloads refused (the running configuration stayed in force).",
        value=status.reload.failures,
    )
    yield GaugeMetricFamily(
        "mqttgw_reload_last_success",
        "0 when the last reload was refused, else 1.",
        value=0 if status.reload.last_result == "failed" else 1,
    )
    ready, _ = status.ready
    yield GaugeMetricFamily(
        "mqttgw_ready",
        "1 when every listener accepts connections and can admit a good device now.",
        value=1 if ready else 0,
    )
    expiry = GaugeMetricFamily(
        "mqttgw_certificate_expiry_timestamp_seconds",
        "notAfter of the gateway's own certificates: each listener's (role=server) and its "
        "client certificate to the broker (role=upstream).",
        labels=["listener", "role"],
    )
    for ls in status.listeners:
        for cert in ls.certificates:
            expiry.add_metric([ls.stats.listener, cert.role], cert.not_after)
    yield expiry
    yield GaugeMetricFamily(
        "mqttgw_start_time_seconds", "When the gateway started.", value=status.started
    )
    if status.workers:
        up = GaugeMetricFamily(
            "mqttgw_worker_up", "1 while the worker process serves, else 0.", labels=["worker"]
        )
        restarts = CounterMetricFamily(
            "mqttgw_worker_restarts",
            "Times the worker process died and was started again.",
            labels=["worker"],
        )
        active = GaugeMetricFamily(
            "mqttgw_worker_connections", "Connections the worker holds now.", labels=["worker"]
        )
        for w in status.workers:
            label = [str(w.index)]
            up.add_metric(label, 1 if w.state == "serving" else 0)
            restarts.add_metric(label, w.restarts)
            active.add_metric(label, w.active)
        yield from (up, restarts, active)


def registry_for(status: Callable[[], GatewayStatus]) -> CollectorRegistry:
    """A registry of the gateway's own metrics only (no process or platform collectors)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(status))
    return registry
