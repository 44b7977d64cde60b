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
from OpenSSL import SSL
from twisted.logger import Logger

from gateway.choices import HealthCheck, RateAction
from gateway.config.model import GlobalSettings, IdentitySettings, ListenerSettings
from gateway.config.values import format_bind
from gateway.mqtt.acl import Acl
from gateway.mqtt.limits import DeviceLimits
from gateway.proxy.factory import session_limits
from gateway.proxy.pool import Broker, BrokerPool
from gateway.proxy.session import SessionLimits
from gateway.proxy.upstream import HealthChecker, PoolConnector
from gateway.reload_plan import ListenerChange
from gateway.revocation.checker import RevocationChecker
from gateway.revocation.ocsp_client import OcspChecker, OcspClient
from gateway.roles import IListenerRole
from gateway.tls.context import build_context
from gateway.tls.material import TlsMaterial
from gateway.tls.verify import CertificateVerifier

log = Logger()


@attrs.frozen(eq=False)
class ListenerParts:
    """Everything one listener runs with, for one configuration generation."""

    settings: ListenerSettings
    material: TlsMaterial
    globals: GlobalSettings
    crl: Any  # IRevocationSource, or None without CRL checking
    revocation: RevocationChecker | None  # with CRL or OCSP checking of clients
    stapler: Any  # IStapler, or None without stapling
    context: SSL.Context
    pool: BrokerPool
    connector: PoolConnector
    health: HealthChecker | None
    session_limits: SessionLimits
    ocsp_client: OcspClient | None = None  # with OCSP checking of clients

    # What the relay reads (``proxy.relay.RelayParts``).
    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def identity(self) -> IdentitySettings:
        return self.settings.identity

    @property
    def upstream_name(self) -> str:
        return format_bind(self.settings.upstream.address)

    @property
    def upstream_proxy_protocol(self) -> str | None:
        return self.settings.upstream.proxy_protocol

    @property
    def log_connect(self) -> bool:
        return self.settings.log_connect

    @property
    def acl(self) -> Acl | None:
        return self.material.acl

    @property
    def acl_deny_action(self) -> str:
        return self.settings.acl.deny_action

    @property
    def device_limits(self) -> DeviceLimits | None:
        """The per-device rates the relay paces to (None: the relay's short path)."""
        limits = self.settings.limits
        if limits.messages_rate is None and limits.bytes_rate is None:
            return None
        return DeviceLimits(
            limits.messages_rate,
            limits.messages_burst,
            limits.bytes_rate,
            limits.bytes_burst,
            disconnect=limits.rate_limit_action == RateAction.DISCONNECT,
        )

    def services(self) -> list[Any]:
        """The services these parts run (CRL source, OCSP client, stapler, broker checks)."""
        return [s for s in (self.crl, self.ocsp_client, self.stapler, self.health) if s is not None]


@attrs.define(eq=False)
class PartsBox:
    """The one reference through which a listener's factories read its current parts."""

    parts: ListenerParts


def build_parts(
    settings: ListenerSettings,
    material: TlsMaterial,
    globals_: GlobalSettings,
    role: IListenerRole,
    reactor: Any,
    previous: ListenerParts | None = None,
    change: ListenerChange | None = None,
) -> ListenerParts:
    """The parts of ``settings``. With ``previous`` and the reload plan's ``change``, what
    did not change is reused (services keep running, the CRLs held stay in force)."""
    crl, client, checker = _revocation(
        settings, material, globals_, role, reactor, previous, change
    )
    stapler = (
        previous.stapler
        if previous is not None and change is not None and not change.ocsp
        else (role.stapler(settings, material, globals_) if settings.ocsp is not None else None)
    )
    if previous is not None and change is not None and not change.upstream:
        pool, connector, health = previous.pool, previous.connector, previous.health
    else:
        pool, connector, health = _upstream(settings, material, role, reactor)
    verifier = CertificateVerifier(checker)
    # pyOpenSSL freezes a context once its first connection exists: the stapling callback
    # goes in before the context is used.
    context = build_context(settings.name, settings.tls, material, verifier)
    if stapler is not None:
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
        session_limits(settings.limits),
        client,
    )


def _revocation(
    settings: ListenerSettings,
    material: TlsMaterial,
    globals_: GlobalSettings,
    role: IListenerRole,
    reactor: Any,
    previous: ListenerParts | None,
    change: ListenerChange | None,
) -> tuple[Any, OcspClient | None, RevocationChecker | None]:
    """The CRL source, the OCSP client and the checker reading both (each reused where the
    reload plan says it did not change)."""
    reload = previous is not None and change is not None
    if reload and not change.crl and not change.client_ocsp:  # type: ignore[union-attr]
        assert previous is not None
        return previous.crl, previous.ocsp_client, previous.revocation
    source = _crl_source(settings, material, globals_, role, previous, change)
    client = None
    if settings.client_ocsp is not None:
        if reload and not change.client_ocsp:  # type: ignore[union-attr]
            assert previous is not None
            client = previous.ocsp_client
        else:
            client = role.ocsp_client(settings, material, globals_)
    if source is None and client is None:
        return None, None, None
    checker = RevocationChecker(
        source.cache if source is not None else None,
        settings.crl,
        source,
        reactor,
        material.issuers,
        _ocsp_checker(settings, client, material, reactor) if client is not None else None,
    )
    return source, client, checker


def _ocsp_checker(
    settings: ListenerSettings, client: OcspClient, material: TlsMaterial, reactor: Any
) -> OcspChecker:
    assert settings.client_ocsp is not None
    return OcspChecker(
        settings.client_ocsp, client.answers, material.issuers, client.ask, reactor, client
    )


def _crl_source(
    settings: ListenerSettings,
    material: TlsMaterial,
    globals_: GlobalSettings,
    role: IListenerRole,
    previous: ListenerParts | None,
    change: ListenerChange | None,
) -> Any:
    if previous is not None and change is not None and not change.crl:
        return previous.crl
    if settings.crl is None:
        return None
    cache = None
    if previous is not None and change is not None and change.keep_crls:
        assert previous.crl is not None
        cache = previous.crl.cache  # CRLs validated against the same CAs
        cache.grace = settings.crl.grace_period
        if not settings.crl.from_cert:
            keep = set(settings.crl.urls)
            for url in previous.crl.sources:
                if url not in keep:
                    cache.forget_source(url)
    return role.revocation_source(settings, material, globals_, cache)


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
