"""Status in one place: the counters the hot path updates, and typed snapshot records of
each listener (counters, CRL sources, OCSP staple) and of the reactor. Services fill them on
request (``ListenerService.status()``); the stats line, metrics and the status page read the
same records. Pure: no Twisted."""

from __future__ import annotations

import bisect
import enum
from collections import Counter

import attrs

from gateway.reasons import Reason

# Upper bounds (seconds) of the duration histograms: a handshake is milliseconds when the
# gateway keeps up, seconds when it does not (handshake_timeout is 15s by default).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@attrs.define(slots=True)
class Histogram:
    """Cumulative-bucket histogram as Prometheus exposes it, for the single-threaded reactor:
    ``observe`` is a bisection and two additions, no lock."""

    bounds: tuple[float, ...] = DURATION_BUCKETS
    counts: list[int] = attrs.Factory(lambda self: [0] * (len(self.bounds) + 1), takes_self=True)
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def snapshot(self) -> HistogramSnapshot:
        cumulative, running = [], 0
        for count in self.counts:
            running += count
            cumulative.append(running)
        return HistogramSnapshot(self.bounds, tuple(cumulative), self.total)


@attrs.frozen
class HistogramSnapshot:
    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]  # one per bound, then +Inf (= the count)
    total: float

    @property
    def count(self) -> int:
        return self.cumulative[-1]


@attrs.define(slots=True)
class ListenerStats:
    """What one listener has done since start (updated on the hot path: plain ints)."""

    name: str
    active: int = 0
    accepted: int = 0  # CONNECT forwarded to the broker
    refused: Counter[str] = attrs.Factory(Counter)  # reason class -> count
    bytes_in: int = 0  # client -> broker, after the CONNECT
    bytes_out: int = 0  # broker -> client
    closed: Counter[str] = attrs.Factory(Counter)  # relayed sessions ended, by closed_by
    handshake_seconds: Histogram = attrs.Factory(Histogram)
    upstream_connect_seconds: Histogram = attrs.Factory(Histogram)
    upstream_failures: int = 0
    upstream_tls: int = 0  # TLS handshakes to brokers
    upstream_tls_resumed: int = 0  # of which resumed a session
    throttled: int = 0  # times a device's PUBLISH was held for its rate
    throttled_seconds: float = 0.0  # the time they were held, added up
    acl_denied: Counter[str] = attrs.Factory(Counter)  # publish / subscribe -> count
    disconnects_sent: Counter[str] = attrs.Factory(Counter)  # MQTT 5 reason code -> count
    sessions: Counter[str] = attrs.Factory(Counter)  # relayed sessions by transport (tls, wss)
    # refusals after the TLS handshake, by transport (before it, none is known yet)
    refused_transport: Counter[str] = attrs.Factory(Counter)

    tenants: Counter[str] = attrs.Factory(Counter)  # relayed sessions by tenant (SNI)
    tenant_refused: Counter[str] = attrs.Factory(Counter)  # "<tenant> <reason>" -> count

    def refuse(self, reason: Reason, tenant: str | None = None) -> None:
        self.refused[str(reason)] += 1
        if tenant is not None:
            self.tenant_refused[f"{tenant} {reason}"] += 1

    def session_started(self, transport: str, tenant: str | None) -> None:
        self.accepted += 1
        self.sessions[transport] += 1
        if tenant is not None:
            self.tenants[tenant] += 1

    def snapshot(self) -> StatsSnapshot:
        return StatsSnapshot(
            self.name,
            self.active,
            self.accepted,
            dict(self.refused),
            self.bytes_in,
            self.bytes_out,
            dict(self.closed),
            self.handshake_seconds.snapshot(),
            self.upstream_connect_seconds.snapshot(),
            self.upstream_failures,
            self.upstream_tls,
            self.upstream_tls_resumed,
            self.throttled,
            self.throttled_seconds,
            dict(self.acl_denied),
            dict(self.disconnects_sent),
            dict(self.sessions),
            dict(self.refused_transport),
            dict(self.tenants),
            dict(self.tenant_refused),
        )


@attrs.frozen
class StatsSnapshot:
    listener: str
    active: int
    accepted: int
    refused: dict[str, int]
    bytes_in: int
    bytes_out: int
    closed: dict[str, int] = attrs.Factory(dict)
    handshake_seconds: HistogramSnapshot | None = None
    upstream_connect_seconds: HistogramSnapshot | None = None
    upstream_failures: int = 0
    upstream_tls: int = 0
    upstream_tls_resumed: int = 0
    throttled: int = 0
    throttled_seconds: float = 0.0
    acl_denied: dict[str, int] = attrs.Factory(dict)
    disconnects_sent: dict[str, int] = attrs.Factory(dict)
    sessions: dict[str, int] = attrs.Factory(dict)  # by transport
    refused_transport: dict[str, int] = attrs.Factory(dict)  # by transport
    tenants: dict[str, int] = attrs.Factory(dict)  # relayed sessions by tenant
    tenant_refused: dict[str, int] = attrs.Factory(dict)  # "<tenant> <reason>" -> count


@attrs.frozen
class CrlStatus:
    """One CRL held (or last seen) from a source."""

    issuer: str
    number: int | None
    this_update: float
    next_update: float | None
    entries: int


@attrs.frozen
class CrlSourceStatus:
    url: str
    discovered: bool
    last_fetch: float | None
    last_result: str | None  # updated, unchanged, older, loaded_from_disk, error
    last_error: str | None
    failures: int
    next_refresh: float | None
    size: int | None
    crls: tuple[CrlStatus, ...]
    last_success: float | None = None
    last_failure: float | None = None
    failure_kinds: dict[str, int] = attrs.Factory(dict)


@attrs.frozen
class CrlCheckStatus:
    """A listener's CRL checking: CRLs held, decisions counted, each source."""

    held: int
    counts: dict[str, int]
    sources: tuple[CrlSourceStatus, ...]


@attrs.frozen
class OcspStatus:
    certificate: str
    serial: str
    responder: str
    status: str | None  # good | revoked | None (nothing stapled)
    produced_at: float | None
    this_update: float | None
    next_update: float | None
    last_fetch: float | None
    last_result: str | None  # updated, unchanged, older, error, loaded_from_disk, dropped
    last_error: str | None
    failures: int
    next_refresh: float | None
    staples_sent: int
    last_success: float | None = None
    last_failure: float | None = None
    failure_kinds: dict[str, int] = attrs.Factory(dict)


@attrs.frozen
class BrokerStatus:
    name: str
    up: bool
    active: int  # relayed sessions now
    sessions: int  # relayed since start
    failures: int  # failed connects and checks since start
    last_error: str | None


# The gateway's own certificates: a warning this many days before notAfter (the page, the
# log, mqttgw status's exit 1), an error this many (exit 2), as Nagios certificate checks do.
EXPIRY_WARNING_DAYS = 30
EXPIRY_CRITICAL_DAYS = 7


@attrs.frozen
class CertificateStatus:
    """A certificate of the gateway's own: its expiry is the classic outage of a TLS front."""

    role: str  # server (the listener's), upstream (the gateway's client certificate)
    subject: str
    serial: str
    not_before: float
    not_after: float

    def days_left(self, now: float) -> float:
        return (self.not_after - now) / 86400


def is_ocsp_count(key: str) -> bool:
    """Whether a count of the revocation checker is OCSP's (else CRL's)."""
    return key.startswith("ocsp_") or key == "held_for_ocsp"


@attrs.frozen
class ResponderStatus:
    """One OCSP responder asked about client certificates."""

    url: str
    requests: int
    failures: int
    in_flight: int
    queued: int
    last_error: str | None


@attrs.frozen
class ClientOcspStatus:
    """OCSP checking of client certificates on one listener."""

    answers: int  # held now
    by_status: dict[str, int]  # good, revoked, unknown
    oldest: float | None  # thisUpdate of the oldest answer held
    hits: int  # handshakes decided from an answer held
    misses: int  # ... that had to ask (or found none usable)
    decisions: dict[str, int]  # ocsp_revoked, ocsp_unknown, held_for_ocsp, ...
    responders: tuple[ResponderStatus, ...] = ()


@attrs.frozen
class AuthHookStatus:
    """The authorization hook of one listener: its answers by kind (allow, deny, failed;
    cached: decided from the cache; shared: joined a request in flight), now."""

    url: str
    counts: dict[str, int]
    in_flight: int = 0
    cached: int = 0  # answers held


@attrs.frozen
class TenantStatus:
    """One tenant of a listener as configured, and what its devices would meet now (its
    counters are the listener's ``StatsSnapshot``'s, by tenant)."""

    id: str
    server_names: tuple[str, ...]
    enabled: bool
    own_cas: bool  # its own cacertfile or match_ca
    crl_sources: tuple[str, ...] = ()  # its own crl_cache_urls
    crl_policy: str | None = None  # its crl_expired_policy, with CRL checking
    auth_url: str | None = None  # the hook asked about its devices
    undecided: str = ""  # why its good devices would be refused now ("" when they would not)
    ocsp: OcspStatus | None = None  # its certificate's staple (with stapling, where fetched)


@attrs.frozen
class ListenerStatus:
    stats: StatsSnapshot
    crl: CrlCheckStatus | None = None
    ocsp: OcspStatus | None = None
    bind: str = ""
    upstream: str = ""
    accepting: bool = True
    not_accepting: str = ""  # why not, when not accepting
    tls: str = ""
    brokers: tuple[BrokerStatus, ...] = ()
    certificates: tuple[CertificateStatus, ...] = ()
    # Why a good device would be refused now although the port accepts (no CRL held for a
    # CA the listener must check, with crl_expired_policy = reject); "" when it would not.
    undecided: str = ""
    client_ocsp: ClientOcspStatus | None = None
    auth: AuthHookStatus | None = None
    tenants: tuple[TenantStatus, ...] = ()


class WorkerState(str, enum.Enum):
    """A worker process's state, as its master sees it."""

    def __str__(self) -> str:
        return str(self.value)

    __hash__ = str.__hash__

    STARTING = "starting"  # spawned; being sent its files, sockets and configuration
    SERVING = "serving"
    RESTARTING = "restarting"  # it died; started again after a backoff
    STOPPED = "stopped"  # the master is stopping


@attrs.frozen
class WorkerStatus:
    """One worker process, as its master sees it."""

    index: int
    pid: int | None
    state: str  # a WorkerState's value
    restarts: int
    started: float | None
    active: int  # connections it holds (every listener)
    accepted: int
    last_exit: str | None = None


@attrs.frozen
class ReloadStatus:
    count: int = 0  # reloads applied
    failures: int = 0  # refused (the running configuration stayed)
    last_time: float | None = None
    last_result: str | None = None  # ok | failed
    last_error: str | None = None
    last_changes: tuple[str, ...] = ()


@attrs.frozen
class FilesStatus:
    """watch_files: the files watched, the settled changes seen and their reloads."""

    watched: int = 0
    changes: int = 0
    applied: int = 0
    refused: int = 0  # (the running material stayed)


@attrs.frozen
class Sample:
    """The gateway's counters at one moment (``gateway.history`` keeps an hour of them)."""

    time: float
    accepted: int  # since start, every listener
    refused: dict[str, int]  # since start, by reason
    handshakes: int  # TLS handshakes completed since start
    active: int  # connections open now
    crl_age: float | None  # seconds since the oldest CRL in force was issued (thisUpdate)


@attrs.frozen
class GatewayStatus:
    """The whole gateway: what /status, /metrics, the status page and ``mqttgw status`` show."""

    version: str
    config_path: str
    started: float
    now: float
    listeners: tuple[ListenerStatus, ...]
    reactor_max_lag: float  # since start
    reactor_lag: HistogramSnapshot | None
    reload: ReloadStatus = ReloadStatus()
    workers: tuple[WorkerStatus, ...] = ()  # with workers: each worker process
    history: tuple[Sample, ...] = ()  # the last hour, every ``history.INTERVAL`` seconds
    files: FilesStatus | None = None  # with watch_files, in the process that reloads
    draining: float | None = None  # since when the gateway drains (not ready)

    @property
    def accepting(self) -> bool:
        """Every listener's port accepts (what systemd's READY=1 waits for: the process
        started; a CA that is down is a matter for /ready, not for the service manager)."""
        return all(ls.accepting for ls in self.listeners)

    @property
    def ready(self) -> tuple[bool, str]:
        """(every listener accepts and can admit a good device now, the reason when not):
        what /ready, /status, the page and ``mqttgw status`` say."""
        if self.draining is not None:
            return False, "draining: the gateway is stopping"
        waiting = [
            f"{ls.stats.listener}: {ls.not_accepting}" for ls in self.listeners if not ls.accepting
        ]
        waiting += [
            f"{ls.stats.listener}: {ls.undecided}"
            for ls in self.listeners
            if ls.accepting and ls.undecided
        ]
        return (not waiting, "; ".join(waiting))
