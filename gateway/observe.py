"""What operators read of a running listener: its status record (counters, CRL sources,
staple, brokers) and the report of a refresh asked for by ``POST /refresh``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from cryptography import x509
from twisted.internet import defer
from twisted.logger import Logger

from gateway.choices import FailurePolicy
from gateway.clock import format_timestamp
from gateway.config.model import CrlSettings
from gateway.config.tenants import own_crl_urls
from gateway.config.values import format_bind
from gateway.parts import ListenerParts
from gateway.reasons import CrlVerdict
from gateway.revocation.crl_cache import CrlCache
from gateway.status import (
    EXPIRY_CRITICAL_DAYS,
    EXPIRY_WARNING_DAYS,
    AuthHookStatus,
    BrokerStatus,
    CertificateStatus,
    ClientOcspStatus,
    CrlCheckStatus,
    CrlSourceStatus,
    ListenerStatus,
    OcspStatus,
    ResponderStatus,
    StatsSnapshot,
    TenantStatus,
    is_ocsp_count,
)

log = Logger(namespace="gateway.service")


def certificate_status(role: str, cert: x509.Certificate) -> CertificateStatus:
    return CertificateStatus(
        role,
        cert.subject.rfc4514_string(),
        format(cert.serial_number, "X"),
        cert.not_valid_before_utc.timestamp(),
        cert.not_valid_after_utc.timestamp(),
    )


_UNDECIDED = {
    CrlVerdict.MISSING: "no CRL held",
    CrlVerdict.EXPIRED: "its CRL is past its nextUpdate",
    CrlVerdict.INCOMPLETE: "the CRLs held do not cover every reason",
}


def undecided(
    cache: CrlCache,
    cas: Sequence[x509.Certificate],
    settings: CrlSettings,
    sources: Sequence[CrlSourceStatus] = (),
) -> str:
    """Why a good device would be refused now (""): with crl_expired_policy = reject, a CA
    of the bundle whose certificates (devices, or the CAs below it) the CRLs held cannot
    decide, as the checker would find (``CrlCache.status``). With crl_cache_from_cert a
    missing CRL is fetched when a device names it (the device is held, not refused)."""
    if settings.expired_policy != FailurePolicy.REJECT:
        return ""
    why = []
    for ca in cas:
        verdict = cache.status(ca.subject.public_bytes(), _ANY_SERIAL)
        if verdict in (CrlVerdict.GOOD, CrlVerdict.REVOKED):
            continue
        if verdict is CrlVerdict.MISSING and settings.from_cert:
            continue
        why.append(f"CA {ca.subject.rfc4514_string()}: {_UNDECIDED[verdict]}")
    if why:
        failing = [f"{s.url} ({s.last_error})" for s in sources if s.last_error and not s.crls]
        if failing:
            why.append("failing: " + ", ".join(failing))
    return "; ".join(why)


# A serial no CA issues (0 is not a valid serial): asking for it tells whether the CRLs held
# decide the CA's certificates at all, whatever they list.
_ANY_SERIAL = 0


def own_status(
    parts: ListenerParts, stats: StatsSnapshot, port: Any, fetches: bool
) -> ListenerStatus:
    """This process's view of a listener, in one record: its parts, its counters, its
    port (``accepting``, ``waiting_reason``); ``fetches``: this process fetches its CRLs
    (and so knows whether they decide a good device now)."""
    settings = parts.settings
    chain = parts.material.chain  # (none on a ws listener)
    certificates = [certificate_status("server", chain[0])] if chain else []
    for tenant in parts.material.tenants:  # (each watched for its expiry as the listener's)
        certificates.append(certificate_status(f"tenant {tenant.settings.id}", tenant.chain[0]))
    upstream = parts.material.upstream
    if upstream is not None and upstream.client_cert is not None:
        certificates.append(certificate_status("upstream", upstream.client_cert))
    crl = None
    counts = dict(parts.revocation.counts) if parts.revocation is not None else {}
    if parts.crl is not None and parts.revocation is not None:
        crl = CrlCheckStatus(
            held=len(parts.crl.cache.infos()),
            counts={k: v for k, v in counts.items() if not is_ocsp_count(k)},
            sources=parts.crl.status(),
        )
    stapler = parts.stapler
    ocsp = stapler.status() if stapler is not None else None  # None: another process staples
    tls = settings.tls
    client_ocsp = None
    if parts.ocsp_client is not None:
        client_ocsp = client_ocsp_status(parts.ocsp_client, counts)
    owners = (parts.authorizer, *parts.tenant_authorizers.values())
    asked = list({id(h): h for h in owners if h is not None}.values())
    auth = None
    if asked:  # (the listener's, and the tenants' own: summed)
        url = ", ".join(dict.fromkeys(h.settings.url or "" for h in asked))
        summed: Counter[str] = Counter()
        for h in asked:
            summed.update(h.counts)
        auth = AuthHookStatus(
            url, dict(summed), sum(h.in_flight for h in asked), sum(len(h.cache) for h in asked)
        )
    return ListenerStatus(
        stats,
        crl,
        ocsp,
        bind=format_bind(settings.bind),
        upstream=format_bind(settings.upstream.address),
        accepting=port.accepting,
        not_accepting=port.waiting_reason,
        tls=f"{tls.profile} ({','.join(tls.versions)})" if settings.transport.tls else "none (ws)",
        brokers=tuple(
            BrokerStatus(f"{owner}{b.name}", b.up, b.active, b.sessions, b.failures, b.last_error)
            for owner, pool in [("", parts.pool)]
            + [(f"{t}/", up[0]) for t, up in parts.tenant_upstreams.items()]
            for b in pool.brokers
        ),
        certificates=tuple(certificates),
        undecided=(
            undecided(
                parts.crl.cache,
                parts.material.ca_certs,
                settings.crl,
                crl.sources if crl is not None else (),
            )
            if fetches and parts.crl is not None and settings.crl
            else ""
        ),
        client_ocsp=client_ocsp,
        auth=auth,
        tenants=tuple(_tenant_status(parts, crl, fetches)),
    )


def _tenant_status(
    parts: ListenerParts, crl: CrlCheckStatus | None, fetches: bool
) -> Iterator[TenantStatus]:
    for tenant in parts.material.tenants:
        t = tenant.settings
        view = parts.settings_for(t.id)
        why = ""
        own_cas = (*tenant.ca_certs, *tenant.match_cas)
        urls = own_crl_urls(t)
        if fetches and parts.crl is not None and view.crl is not None and own_cas:
            sources = [s for s in (crl.sources if crl else ()) if s.url in urls]
            why = undecided(parts.crl.cache, own_cas, view.crl, sources)
        yield TenantStatus(
            t.id,
            t.server_names,
            t.enabled,
            bool(own_cas),
            urls,
            str(view.crl.expired_policy) if view.crl is not None else None,
            view.auth.url,
            why,
            _staple_status(parts.tenant_staplers.get(t.id)),
        )


def _staple_status(stapler: Any) -> OcspStatus | None:
    """A stapler's status (None: none, or a worker's, whose master fetches)."""
    return stapler.status() if stapler is not None else None


def client_ocsp_status(client: Any, counts: dict[str, int]) -> ClientOcspStatus:
    answers = client.answers
    return ClientOcspStatus(
        answers=len(answers),
        by_status=answers.by_status(),
        oldest=answers.oldest(),
        hits=answers.hits,
        misses=answers.misses,
        decisions={k: v for k, v in counts.items() if is_ocsp_count(k)},
        responders=tuple(
            ResponderStatus(url, r.requests, r.failures, r.in_flight, r.queued, r.last_error)
            for url, r in client.responders.items()
        ),
    )


def refresh_now(
    listeners: Sequence[ListenerParts], fetches: bool
) -> defer.Deferred[dict[str, Any]]:
    """Fetch the CRLs and OCSP of ``listeners`` now; fires with ``refresh_report``."""
    sources = [s for parts in listeners for s in (parts.crl, parts.stapler) if s is not None]
    runs = [source.refresh_now() for source in sources]
    d = defer.DeferredList(runs, consumeErrors=True)
    return d.addCallback(lambda _: refresh_report(listeners, fetches))


def refresh_report(listeners: Sequence[ListenerParts], fetches: bool) -> dict[str, Any]:
    """After ``POST /refresh``: each listener's sources and staple, as JSON (``fetches``:
    this process fetched them; a worker's are the master's)."""
    out: dict[str, Any] = {"ok": True, "listeners": {}}
    for parts in listeners:
        entry: dict[str, Any] = {}
        if parts.crl is not None and fetches:
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
        if parts.stapler is not None and fetches:
            o = parts.stapler.status()
            entry["ocsp"] = {
                "status": o.status,
                "result": o.last_result,
                "error": o.last_error,
                "next_update": format_timestamp(o.next_update),
            }
        out["listeners"][parts.name] = entry or "nothing to refresh"
    return out


def gateway_version() -> str:
    try:
        from importlib.metadata import version

        return version("mqttgw")
    except Exception:
        return "dev"


def log_expiring(listeners: Sequence[ListenerStatus], now: float) -> None:
    """A warning line for each certificate of the gateway's own that expires within
    EXPIRY_WARNING_DAYS (an error line within the critical days, or once expired)."""
    for ls in listeners:
        for cert in ls.certificates:
            days = cert.days_left(now)
            if days >= EXPIRY_WARNING_DAYS:
                continue
            level = log.error if days < EXPIRY_CRITICAL_DAYS else log.warn
            level(
                "certificate {role} of listener {listener} ({subject}, serial {serial}) "
                "{when} {not_after}: renew it and reload",
                role=cert.role,
                listener=ls.stats.listener,
                subject=cert.subject,
                serial=cert.serial,
                when="EXPIRED on" if days < 0 else f"expires in {days:.0f} days, on",
                not_after=format_timestamp(cert.not_after),
            )
