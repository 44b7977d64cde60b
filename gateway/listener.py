"""One listener's service: its port, the services of its parts (CRL source, stapler, broker
checks), its counters; on a reload, ``reconfigure`` (new parts, one assignment) or
``retire`` (drain, then stop)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gateway.config.values import format_bind
from gateway.drain import drain, pace
from gateway.observe import own_status
from gateway.parts import ListenerEvents, ListenerHandle, ListenerParts, PartsBox
from gateway.ports import ready_timeout
from gateway.proxy.entry import DirectFactory, EntryFactory, Gate
from gateway.proxy.factory import GatewayFactory
from gateway.reasons import Reason
from gateway.reload_plan import ListenerChange
from gateway.roles import IListenerRole
from gateway.status import ListenerStats, ListenerStatus
from gateway.tls.context import ServerConnectionCreator

log = Logger()


class ListenerService(service.MultiService):
    """One listener: its port, the services of its parts (CRL source, stapler, broker
    checks), its counters. The factories read the parts through ``box`` only."""

    def __init__(
        self,
        build: Callable[[ListenerEvents], ListenerParts],
        role: IListenerRole,
        reactor: Any,
        cooperator: task.Cooperator,
    ) -> None:
        """``build``: the listener's first parts, given what they are to tell it (a reload
        builds the next ones with the same ``events``)."""
        super().__init__()
        self.events = ListenerEvents(
            crl_updated=self.revocation_updated,
            ocsp_revoked=self.ocsp_revoked,
            staple_changed=self.staple_changed,
        )
        parts = build(self.events)
        self.setName(parts.name)
        self.role = role
        self.reactor = reactor
        self.box = PartsBox(parts)
        self.stats = ListenerStats(parts.name)
        cooperate = cooperator.cooperate
        self.creator = ServerConnectionCreator(lambda: self.box.parts.context)
        self.gate = Gate(parts.name, self.stats, parts.settings.limits, reactor)
        # Nothing between the port and the client protocol: TLS in the port's transports
        # (a BioTLSPort's), or no TLS (a ws listener); the client factory tells the gate of
        # each closed connection.
        self.factory = GatewayFactory(self.box, reactor, self.stats, cooperate, self.gate.closed)
        tls = DirectFactory(self.gate, self.factory)
        self.entry = EntryFactory(tls, lambda: self.box.parts.settings.front, reactor)
        self.handle = ListenerHandle(
            parts.name,
            lambda: self.box.parts,
            self.entry,
            self.creator,
            reactor,
            self.gate.stop,
        )
        self._generation = 0  # reloads that replaced a service (unique child names)
        # Closes per second when the gateway stops (None: spread over the drain); the
        # gateway sets this listener's share of drain_rate before stopping it.
        self.drain_rate: float | None = parts.globals.drain_rate
        self._attach(parts.services())
        if parts.crl is not None:
            parts.crl.ready.addCallback(lambda _: self.revocation_updated())
        self.port = role.port(self.handle, parts.settings)
        self.port.setServiceParent(self)
        self._logged = False

    @property
    def parts(self) -> ListenerParts:
        return self.box.parts

    def revocation_updated(self, _crls: object = None) -> None:
        """New CRLs are in force (the role sweeps live sessions, or publishes them)."""
        self.role.revocation_updated(self.handle, self.factory.sweep_revoked)

    def ocsp_revoked(self, _key: object = None) -> None:
        """An OCSP answer says a certificate is revoked: the live sessions here are swept
        (a master has none: its workers sweep theirs when their own refresh learns it)."""
        self.factory.sweep_revoked()

    def staple_changed(self, _der: object = None) -> None:
        """The staple changed (a refresh, or a reload's new stapler)."""
        self.role.staple_changed(self.handle)

    def status(self) -> ListenerStatus:
        own = own_status(self.parts, self.stats.snapshot(), self.port, fetches=self.role.fetches)
        return self.role.status(self.handle, own)

    def _attach(self, services: list[Any]) -> None:
        for child in services:
            if child.parent is None:
                if self.namedServices.get(child.name) is not None:
                    self._generation += 1  # the old one runs until the swap: another name
                    child.setName(f"{child.name}#{self._generation}")
                child.setServiceParent(self)

    def reconfigure(
        self, new: ListenerParts, change: ListenerChange, new_port: Any | None
    ) -> defer.Deferred[None]:
        """Apply a reload to this listener; live connections are untouched.

        The new parts' new services (only where the plan says their settings, the CA
        bundle or the certificate changed) start first and are swapped in once their first
        round is over (bounded), so new handshakes never meet an empty cache; the CRLs held
        stay in force where the CA bundle did not change. Then one assignment installs the
        new parts: the next handshake gets the new context, the next connection the new
        limits, brokers and identity rules; a moved listener's old port closes.
        """
        old = self.parts
        fresh = [s for s in new.services() if s not in old.services()]
        self._attach(fresh)
        waits: list[defer.Deferred[Any]] = []
        if new.crl is not None and new.crl is not old.crl and change.waits_for_crls:
            assert new.settings.crl is not None
            timeout = ready_timeout(new.settings.crl.http_timeout)
            waits.append(_bounded(new.crl.ready, timeout, self.reactor))
        if new.stapler is not None and new.stapler is not old.stapler:
            assert new.settings.ocsp is not None
            timeout = new.settings.ocsp.http_timeout + 5
            waits.append(_bounded(new.stapler.first_attempt(), timeout, self.reactor))

        def swap(_: object) -> None:
            self.box.parts = new
            self.gate.reconfigure(new.settings.limits)
            for gone in old.services():
                if gone not in new.services():
                    gone.disownServiceParent()
            if new_port is not None:
                old_port, self.port = self.port, new_port
                self._generation += 1
                new_port.setName(f"port#{self._generation}")
                new_port.setServiceParent(self)
                old_port.disownServiceParent()  # stops listening; accepted connections stay
            if new.crl is not None and new.crl is not old.crl:
                self.revocation_updated()  # live sessions against the new revocation data
            if new.deny and new.deny != old.deny:
                self.factory.sweep_denied()  # live sessions against the new deny_file
            if new.tenants_enabled != old.tenants_enabled:
                self.factory.sweep_tenants()  # the sessions of tenants no longer served
            if new.stapler is not old.stapler:
                self.staple_changed()

        return defer.gatherResults(waits).addCallback(swap)

    def retire(self, drain_seconds: float) -> defer.Deferred[Any]:
        """A reload removed this listener: stop accepting now, let its connections end for
        ``drain_seconds``, close the rest (closed_by=reload), then stop its services."""
        self.port.disownServiceParent()
        log.info(
            "listener {listener} removed: stopped accepting; {count} connection(s) get "
            "{drain:g}s to end",
            listener=self.parts.name,
            count=len(self.gate.protocols),
            drain=drain_seconds,
        )
        drained = drain(
            self.gate,
            self.reactor,
            drain_seconds,
            Reason.RELOAD,
            "its listener was removed by a reload",
        )
        return drained.addCallback(lambda _: self.disownServiceParent())

    def startService(self) -> None:
        # Logged once every port is bound (privilegedStartService): a start that fails on
        # another listener's port does not claim this one listens.
        super().startService()
        for warning in self.parts.material.warnings:
            log.warn("{warning}", warning=warning)
        if not self._logged:
            self._logged = True
            settings = self.parts.settings
            tls = settings.tls
            log.info(
                "listener {listener} on {bind} -> upstream {upstream} ({how})",
                listener=settings.name,
                bind=format_bind(settings.bind),
                upstream=format_bind(settings.upstream.address),
                how=(
                    f"verify={'verify_peer' if tls.verify_peer else 'verify_none'}, "
                    f"tls={','.join(tls.versions)}"
                    if settings.transport.tls
                    else "ws: no TLS, the load balancer in front ends it"
                ),
            )

    def stopService(self) -> defer.Deferred[Any]:
        """Graceful stop: the port stops accepting (its service stops first), the parts'
        services stop, live sessions get ``shutdown_drain`` to end, then are closed."""
        stopped = defer.maybeDeferred(super().stopService)
        count = len(self.gate.protocols)
        seconds = self.parts.globals.shutdown_drain
        rate = pace(self.drain_rate, count, seconds)
        if count:
            log.info(
                "stopping {listener}: {count} connection(s) closed over {drain:g}s, "
                "{rate:.1f} a second, oldest first, the rest at its end",
                listener=self.parts.name,
                count=count,
                drain=seconds,
                rate=rate,
            )
        why = "the gateway is stopping"
        drained = drain(self.gate, self.reactor, seconds, Reason.SHUTDOWN, why, rate)
        return defer.gatherResults([stopped, drained])


def _bounded(d: defer.Deferred[Any], seconds: float, reactor: IReactorTime) -> defer.Deferred[None]:
    """``d``, but at most ``seconds`` long; never fails (a reload goes on either way)."""
    waiter: defer.Deferred[None] = defer.Deferred()

    def done(result: object = None) -> None:
        if timer.active():
            timer.cancel()
        if not waiter.called:
            waiter.callback(None)

    timer = reactor.callLater(seconds, done)
    d.addBoth(done)
    return waiter
