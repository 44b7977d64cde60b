"""The builder: one listener's parts from its settings, its loaded material, the global
settings and the process's role, as one frozen record. Downhill only: it builds and
returns; nothing it builds reaches back into the service tree.

The listener's factories read the parts through the listener's one reference
(``PartsBox.parts``), so a reload builds a new record (reusing what did not change, as the
reload plan says) and installs it with one assignment: the next handshake gets the new
context, the next connection the new limits, broker pool and identity rules.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.logger import Logger

from gateway.choices import HealthCheck
from gateway.config.model import AuthSettings, GlobalSettings, ListenerSettings, TenantSettings
from gateway.config.tenants import crl_reject, crl_urls, tenant_view
from gateway.parts import ListenerEvents, ListenerParts
from gateway.proxy.authorize import Authorizer
from gateway.proxy.factory import session_limits
from gateway.proxy.pool import Broker, BrokerPool
from gateway.proxy.upstream import HealthChecker, PoolConnector
from gateway.reload_plan import ListenerChange
from gateway.revocation.checker import RevocationChecker
from gateway.revocation.fetch import HttpFetcher
from gateway.revocation.ocsp_checker import OcspChecker
from gateway.revocation.ocsp_client import OcspClient
from gateway.roles import IListenerRole
from gateway.tls.context import build_context
from gateway.tls.material import TlsMaterial
from gateway.tls.verify import CertificateVerifier
from gateway.twisted_native import quiet_agent

log = Logger()


def build_parts(
    settings: ListenerSettings,
    material: TlsMaterial,
    globals_: GlobalSettings,
    role: IListenerRole,
    reactor: Any,
    events: ListenerEvents,
    previous: ListenerParts | None = None,
    change: ListenerChange | None = None,
) -> ListenerParts:
    """The parts of ``settings``, each given the listener's ``events`` it reports. With
    ``previous`` and the reload plan's ``change``, what did not change is reused (services
    keep running, the CRLs held stay in force)."""
    crl, client, checker = _revocation(
        settings, material, globals_, role, reactor, events, previous, change
    )
    stapler = (
        previous.stapler
        if previous is not None and change is not None and not change.ocsp
        else (
            role.stapler(settings, material, globals_, events.staple_changed)
            if settings.ocsp is not None
            else None
        )
    )
    if previous is not None and change is not None and not change.upstream:
        pool, connector, health = previous.pool, previous.connector, previous.health
    else:
        pool, connector, health = _upstream(settings, material, role, reactor)
    # the hook settings of the listener's devices (None) and of each tenant's
    hooks = {None: settings.auth} | {t.id: tenant_view(settings, t).auth for t in settings.tenants}
    askers = {auth: _authorizer(settings.name, auth, reactor, previous) for auth in hooks.values()}
    verifier = CertificateVerifier(checker)
    tenant_staplers = _tenant_staplers(settings, material, globals_, role, events, previous, change)
    # pyOpenSSL freezes a context once its first connection exists: the stapling callbacks
    # go in before the context is used.
    context = (
        build_context(settings.name, settings.tls, material, verifier, tenant_staplers)
        if settings.transport.tls
        else None  # a ws listener: no TLS here
    )
    if stapler is not None and context is not None:
        stapler.install(context)
    return ListenerParts(
        settings,
        material,
        globals_,
        crl,
        checker,
        stapler,
        context,
        pool,
        connector,
        health,
        session_limits(settings.limits, any(a.url for a in hooks.values())),
        client,
        askers[settings.auth],
        {
            t.id: _upstream(_tenant_upstream(settings, t), material, role, reactor)
            for t in settings.tenants
            if t.upstream is not None
        },
        {
            tenant: hook
            for tenant, auth in hooks.items()
            if tenant is not None and auth != settings.auth and (hook := askers[auth]) is not None
        },
        tenant_staplers,
    )


def _tenant_staplers(
    settings: ListenerSettings,
    material: TlsMaterial,
    globals_: GlobalSettings,
    role: IListenerRole,
    events: ListenerEvents,
    previous: ListenerParts | None,
    change: ListenerChange | None,
) -> dict[str, Any]:
    """With stapling, a stapler per tenant certificate (named ``<listener>/<tenant>``: its
    log lines, its kept response, a worker's staple): the previous one while the stapling
    settings and the tenant's certificate hold."""
    out = {}
    old = {t.settings.id: t for t in previous.material.tenants} if previous is not None else {}
    for tenant in material.tenants:
        tid = tenant.settings.id
        if tenant.ocsp is None:
            continue
        kept = previous.tenant_staplers.get(tid) if previous is not None else None
        same = tid in old and old[tid].chain[:1] == tenant.chain[:1]
        if kept is not None and change is not None and not change.ocsp and same:
            out[tid] = kept
            continue
        out[tid] = role.stapler(
            attrs.evolve(settings, name=f"{settings.name}/{tid}"),
            attrs.evolve(material, ocsp=tenant.ocsp),
            globals_,
            events.staple_changed,
        )
    return out


def _tenant_upstream(settings: ListenerSettings, tenant: TenantSettings) -> ListenerSettings:
    """The listener's settings with a tenant's own brokers (its pool's name in the log:
    ``<listener>/<tenant>``); the rest of the upstream settings are the listener's."""
    assert tenant.upstream is not None
    upstream = attrs.evolve(settings.upstream, addresses=tenant.upstream)
    return attrs.evolve(settings, name=f"{settings.name}/{tenant.id}", upstream=upstream)


def _authorizer(name: str, auth: AuthSettings, reactor: Any, previous: ListenerParts | None) -> Any:
    """A hook's asker: a previous one with the same settings (its cache, its connections),
    else a new one on an HTTP client of its own (persistent connections)."""
    if auth.url is None:
        return None
    if previous is not None:
        for old in (previous.authorizer, *previous.tenant_authorizers.values()):
            if old is not None and old.settings == auth:
                return old
    fetcher = HttpFetcher(quiet_agent(reactor, persistent=True), reactor)
    return Authorizer(name, auth, fetcher.fetch, reactor)


def _revocation(
    settings: ListenerSettings,
    material: TlsMaterial,
    globals_: GlobalSettings,
    role: IListenerRole,
    reactor: Any,
    events: ListenerEvents,
    previous: ListenerParts | None,
    change: ListenerChange | None,
) -> tuple[Any, OcspClient | None, RevocationChecker | None]:
    """The CRL source, the OCSP client and the checker reading both (each reused where the
    reload plan says it did not change)."""
    if previous is not None and change is not None:
        if not change.crl and not change.client_ocsp:
            return previous.crl, previous.ocsp_client, previous.revocation
    source = _crl_source(settings, material, globals_, role, events, previous, change)
    client = None
    if settings.client_ocsp is not None:
        if previous is not None and change is not None and not change.client_ocsp:
            client = previous.ocsp_client
        else:
            client = role.ocsp_client(settings, material, globals_, events.ocsp_revoked)
    if source is None and client is None:
        return None, None, None
    checker = RevocationChecker(
        source.cache if source is not None else None,
        settings.crl,
        source,
        reactor,
        material.revocation_issuers,
        _ocsp_checker(settings, client, material, reactor) if client is not None else None,
        crl_reject(settings),
        {
            t.id: _ocsp_checker(view, client, material, reactor)
            for t in settings.tenants
            if client is not None
            and (view := tenant_view(settings, t)).client_ocsp != settings.client_ocsp
        },
    )
    return source, client, checker


def _ocsp_checker(
    settings: ListenerSettings, client: OcspClient, material: TlsMaterial, reactor: Any
) -> OcspChecker:
    assert settings.client_ocsp is not None
    return OcspChecker(
        settings.client_ocsp,
        client.answers,
        material.revocation_issuers,
        client.ask,
        reactor,
        tracker=client,
        asks_master=client.remote is not None,
    )


def _crl_source(
    settings: ListenerSettings,
    material: TlsMaterial,
    globals_: GlobalSettings,
    role: IListenerRole,
    events: ListenerEvents,
    previous: ListenerParts | None,
    change: ListenerChange | None,
) -> Any:
    if previous is not None and change is not None and not change.crl:
        return previous.crl
    crl = settings.crl
    if crl is None:
        return None
    # (the tenants' CRL sources too: one cache, keyed by issuer; each tenant's CAs are in
    # the material's trust input)
    crl = attrs.evolve(crl, urls=crl_urls(settings))
    settings = attrs.evolve(settings, crl=crl)
    cache = None
    if previous is not None and change is not None and change.keep_crls:
        assert previous.crl is not None
        cache = previous.crl.cache  # CRLs validated against the same CAs
        cache.grace = crl.grace_period
        if not crl.from_cert:
            keep = set(crl.urls)
            for url in previous.crl.sources:
                if url not in keep:
                    cache.forget_source(url)
    return role.revocation_source(settings, material, globals_, cache, events.crl_updated)


def _upstream(
    settings: ListenerSettings, material: TlsMaterial, role: IListenerRole, reactor: Any
) -> tuple[BrokerPool, PoolConnector, HealthChecker | None]:
    """The broker pool, its connector (plain or TLS) and its health checks."""
    name = settings.name

    def changed(broker: Broker, why: str) -> None:
        level = log.info if broker.up else log.warn
        level(
            "upstream {listener} broker {broker} is {state}: {why}",
            listener=name,
            broker=broker.name,
            state="up" if broker.up else "DOWN",
            why=why,
        )

    up = settings.upstream
    pool = BrokerPool(up.addresses, up.balance, up.down_time, changed)
    connector = PoolConnector(reactor, up, pool, material.upstream)
    health = None
    if (
        role.checks_brokers
        and up.check_interval > 0
        and (len(up.addresses) > 1 or up.check == HealthCheck.MQTT)
    ):
        health = HealthChecker(connector, name)
    return pool, connector, health
