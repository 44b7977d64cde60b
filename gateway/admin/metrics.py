"""Prometheus metrics, read from the status records at scrape time.

Nothing here runs on the hot path: connections update plain counters and lock-free
histograms (``gateway.status``); a scrape turns the current ``GatewayStatus`` into metric
families. Labels stay bounded: listener, refusal reason, closed_by, direction, CRL source URL
and error kind, OCSP status; never a client address, id or certificate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from gateway.admin.metrics_revocation import buckets as _buckets
from gateway.admin.metrics_revocation import family as _family
from gateway.admin.metrics_revocation import revocation as _revocation
from gateway.reasons import Reason, Side
from gateway.status import GatewayStatus

# Every refusal reason the gateway has (``gateway.reasons.Reason``), exported at 0 before it
# first happens, so that rate() and alerts work from the start.
REASONS = tuple(reason.value for reason in Reason)
# Who ends sessions most: the device, the broker, the gateway's revocation, stops and reloads
# (the other reasons appear once they happen).
CLOSED_BY = (
    Side.CLIENT.value,
    Side.BROKER.value,
    Reason.REVOKED.value,
    Reason.SHUTDOWN.value,
    Reason.RELOAD.value,
)


class GatewayCollector(Collector):
    """Collects from ``status()`` (the gateway's ``GatewayStatus``) at each scrape."""

    def __init__(self, status: Callable[[], GatewayStatus]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        yield from _connections(status)
        yield from _revocation(status)
        yield from _process(status)


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
    by_transport = _family(
        CounterMetricFamily,
        "mqttgw_sessions",
        "Relayed sessions, by how the device reached the gateway (tls: MQTT over TLS, wss: "
        "MQTT over WebSocket over TLS).",
        ["listener", "transport"],
    )
    by_tenant = _family(
        CounterMetricFamily,
        "mqttgw_tenant_sessions",
        "Relayed sessions whose server name (SNI) chose a tenant's certificate, by tenant "
        "(the configured tenants only).",
        ["listener", "tenant"],
    )
    tenant_refused = _family(
        CounterMetricFamily,
        "mqttgw_tenant_refused",
        "Connections refused, by the tenant their server name (or CA) chose and reason "
        "class (the configured tenants only).",
        ["listener", "tenant", "reason"],
    )
    refused_transport = _family(
        CounterMetricFamily,
        "mqttgw_refused_after_handshake",
        "Connections refused after the TLS handshake, by transport (the reasons are in "
        "mqttgw_refused_total).",
        ["listener", "transport"],
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
        for transport in sorted({"tls", *s.sessions}):
            by_transport.add_metric([name, transport], s.sessions.get(transport, 0))
        for transport in sorted({"tls", *s.refused_transport}):
            refused_transport.add_metric([name, transport], s.refused_transport.get(transport, 0))
        for tenant, count in sorted(s.tenants.items()):
            by_tenant.add_metric([name, tenant], count)
        for key, count in sorted(s.tenant_refused.items()):
            tenant, _, reason = key.partition(" ")
            tenant_refused.add_metric([name, tenant, reason], count)
    yield from (accepted, refused, active, closed, revoked_live, relayed, handshake, upstream)
    yield from (upstream_failures, upstream_tls, accepting, throttled, throttled_seconds)
    yield acl_denied
    yield disconnects
    yield by_transport
    yield by_tenant
    yield tenant_refused
    yield refused_transport
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
    yield GaugeMetricFamily(
        "mqttgw_draining",
        "1 while the gateway drains (SIGTERM, POST /drain) before it exits.",
        value=0 if status.draining is None else 1,
    )
    if status.files is not None:
        yield GaugeMetricFamily(
            "mqttgw_watched_files", "Files watch_files looks at.", value=status.files.watched
        )
        changes = CounterMetricFamily(
            "mqttgw_file_reloads",
            "Reloads started by a settled change of a watched file, by result (applied, or "
            "refused: the running material stayed).",
            labels=["result"],
        )
        changes.add_metric(["applied"], status.files.applied)
        changes.add_metric(["refused"], status.files.refused)
        yield changes
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
