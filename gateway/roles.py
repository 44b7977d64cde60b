"""What makes a single process, a master and a worker differ, declared as interfaces: each
role gives a listener where its CRLs come from, its stapler and its listening port. The
builder (``gateway.build``) and the service tree (``gateway.service``) take a role; none
of them is subclassed per role.

- single process (``SingleProcess``, here): fetches CRLs and OCSP itself, binds its port,
  checks its brokers, sweeps its live sessions after a CRL update;
- master (``gateway.workers.master.MasterRole``): fetches once for every worker, holds the
  workers' sockets, relays nothing, publishes each CRL update as a snapshot;
- worker (``gateway.workers.child.WorkerRole``): reads the master's snapshot and staple,
  adopts the master's socket, serves connections.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from gateway.config.model import GlobalSettings, ListenerSettings
from gateway.config.values import format_bind
from gateway.handover import Inherited
from gateway.parts import ListenerHandle
from gateway.ports import PortService, ready_timeout
from gateway.revocation.crl_service import CrlCache, CrlService
from gateway.revocation.fetch import HttpFetcher
from gateway.revocation.ocsp_client import OcspClient
from gateway.revocation.ocsp_service import OcspStapler
from gateway.revocation.process import SubprocessProcessor
from gateway.status import ListenerStatus
from gateway.tls.bio_transport import BioTLSPort
from gateway.tls.material import TlsMaterial
from gateway.twisted_native import adopt_listening_socket

log = Logger()


class IRevocationSource(Interface):
    """Where a listener's CRLs come from (a service): fetched here (``CrlService``) or the
    master's snapshot (a worker's ``SharedCrl``)."""

    cache = Attribute("the CrlCache the handshake reads")
    ready = Attribute("a Deferred that fires once the first round is done")
    sources = Attribute("url -> source, for the sources fetched in this process")

    def status() -> tuple[Any, ...]:
        """The state of each source fetched here."""

    def refresh_now() -> defer.Deferred[Any]:
        """Fetch every source now."""

    def discover(url: str) -> None:
        """A certificate named this distribution point: fetch it from now on."""

    def when_attempted(url: str) -> defer.Deferred[None]:
        """Fires once the distribution point's first fetch is over."""


class IStapler(Interface):
    """The OCSP staple of the listener's own certificate (a service)."""

    def install(ctx: Any) -> None:
        """Put the stapling callback on a context (before its first connection)."""

    def first_attempt() -> defer.Deferred[None]:
        """Fires once the first fetch is over (at once where another process fetches)."""


class IListenerRole(Interface):
    """A role: what the listeners of one process are given."""

    checks_brokers = Attribute("run the active health checks of the broker pools")
    fetches = Attribute("this process fetches CRLs and OCSP (reports their sources)")

    def revocation_source(
        settings: ListenerSettings,
        material: TlsMaterial,
        globals_: GlobalSettings,
        cache: CrlCache | None,
        on_update: Callable[..., None],
    ) -> Any:
        """The listener's IRevocationSource (its settings have CRL checking on); ``cache``:
        the CRLs to keep (a reload with the same CA bundle), else None; ``on_update``:
        called after new CRLs are in force."""

    def stapler(
        settings: ListenerSettings,
        material: TlsMaterial,
        globals_: GlobalSettings,
        on_change: Callable[[bytes], None],
    ) -> Any:
        """The listener's IStapler (its settings have stapling on); ``on_change``: called
        with the new staple's DER (b"": none) when it changes."""

    def ocsp_client(
        settings: ListenerSettings,
        material: TlsMaterial,
        globals_: GlobalSettings,
        on_revoked: Callable[..., None],
    ) -> Any:
        """The listener's OcspClient (its settings have OCSP checking of clients on);
        ``on_revoked``: called when an answer says a certificate is revoked."""

    def port(listener: ListenerHandle, settings: ListenerSettings) -> Any:
        """The listener's port service for ``settings.bind`` (not bound yet): ``bind()``,
        ``accepting``, ``waiting_reason``."""

    def revocation_updated(listener: ListenerHandle, sweep: Callable[[], Any]) -> None:
        """New CRLs are in force for ``listener`` (``sweep``: close its live sessions
        whose certificate they revoke)."""

    def staple_changed(listener: ListenerHandle) -> None:
        """``listener``'s stapler changed (a reload installed a new one)."""

    def status(listener: ListenerHandle, own: ListenerStatus) -> ListenerStatus:
        """The listener's status from this process's ``own``."""


def tcp_endpoint(reactor: Any, bind: tuple[str, int]) -> Any:
    host, port = bind
    if ":" in host:
        return endpoints.TCP6ServerEndpoint(reactor, port, interface=host)
    return endpoints.TCP4ServerEndpoint(reactor, port, interface=host)


def inherited_socket(inherited: Inherited, bind: tuple[str, int]) -> socket.socket | None:
    """The inherited listening socket bound at ``bind`` (systemd's, or one a takeover
    handed over), if any; of a group handed over, one (the rest are closed)."""
    given = inherited.take(bind)
    if len(given) > 1:  # a master's group, taken by one process: one socket serves
        log.warn(
            "{bind}: {n} sockets handed over, one process uses one (connections waiting "
            "on the others are reset: keep workers the same across a takeover)",
            bind=format_bind(bind),
            n=len(given),
        )
        for extra in given[1:]:
            extra.close()
    return given[0] if given else None


def listen_endpoint(reactor: Any, inherited: Inherited, bind: tuple[str, int]) -> Any:
    """Where to listen on ``bind``: an inherited socket bound there (systemd's, or one a
    takeover handed over), else a new one."""
    given = inherited_socket(inherited, bind)
    if given is None:
        return tcp_endpoint(reactor, bind)
    fd = os.dup(given.fileno())  # (the endpoint closes it once listening)
    given.close()
    return endpoints.AdoptedStreamServerEndpoint(reactor, fd, given.family)


@implementer(IStreamServerEndpoint)
class OwnTLSEndpoint:
    """Listens with a ``BioTLSPort`` (its connections run TLS in memory BIOs of their
    own), on a new socket or on an inherited one."""

    def __init__(
        self,
        reactor: Any,
        bind: tuple[str, int],
        creator: Any,
        given: socket.socket | None = None,
    ) -> None:
        self.reactor = reactor
        self.bind = bind
        self.creator = creator
        self.given = given  # an inherited listening socket bound there, if any

    def listen(self, factory: Any) -> defer.Deferred[Any]:
        host, port = self.bind
        tls_port = BioTLSPort(port, factory, self.creator, interface=host, reactor=self.reactor)
        try:
            if self.given is not None:  # (systemd's socket, or one a takeover handed over)
                adopt_listening_socket(tls_port, self.given)
                self.given = None
            tls_port.startListening()
        except Exception as e:
            return defer.fail(e)
        return defer.succeed(tls_port)


def port_service(
    listener: ListenerHandle, settings: ListenerSettings, endpoint: Any
) -> PortService:
    """The port of a listener that accepts in this process (one process, a worker)."""
    parts = listener.parts()
    # The port accepts once the listener can decide a device: its first CRL round is done,
    # and the OCSP answers kept by the previous run are restored.
    waits: list[defer.Deferred[Any]] = []
    timeout = 0.0
    if parts.crl is not None and settings.crl is not None:
        waits.append(parts.crl.ready)
        timeout = ready_timeout(settings.crl.http_timeout)
    if parts.ocsp_client is not None and settings.client_ocsp is not None:
        waits.append(parts.ocsp_client.loaded)
        timeout = max(timeout, ready_timeout(settings.client_ocsp.http_timeout))
    ready: defer.Deferred[Any] | None = None
    if waits:
        ready = defer.gatherResults(waits).addCallback(lambda _: None)
    return PortService(
        endpoint,
        settings.bind,
        listener.entry,
        ready,
        listener.reactor,
        timeout,
        settings.name,
        on_stop=listener.stop_accepting,
    )


class Serving:
    """What a process that serves connections does with a listener's updates: it sweeps
    its live sessions after a CRL update and reports its own status."""

    def revocation_updated(self, listener: ListenerHandle, sweep: Callable[[], Any]) -> None:
        sweep()

    def staple_changed(self, listener: ListenerHandle) -> None:
        pass  # the next handshake staples the new one

    def status(self, listener: ListenerHandle, own: ListenerStatus) -> ListenerStatus:
        return own


@implementer(IListenerRole)
class SingleProcess(Serving):
    """One process does everything."""

    checks_brokers = True
    fetches = True

    def __init__(
        self,
        reactor: IReactorTime,
        http: HttpFetcher,
        cooperate: Callable[[Iterator[Any]], Any],
        processor: Any = None,
        inherited: Inherited | None = None,
    ) -> None:
        """``cooperate``: the process's cooperator's (its parts' long walks); ``inherited``:
        listening sockets given to the process (a listener on one of their addresses
        listens on it rather than binding)."""
        self.reactor = reactor
        self.http = http
        self.cooperate = cooperate
        self.processor = processor
        self.inherited = inherited if inherited is not None else Inherited()

    def revocation_source(
        self,
        settings: ListenerSettings,
        material: TlsMaterial,
        globals_: GlobalSettings,
        cache: CrlCache | None,
        on_update: Callable[..., None],
    ) -> CrlService:
        assert settings.crl is not None and material.ca_pem is not None
        return CrlService(
            settings.name,
            settings.crl,
            globals_.crl_refresh_interval,
            globals_.crl_cache_dir,
            self.reactor,
            self.http,
            self.processor or SubprocessProcessor(self.reactor),
            cache or CrlCache(self.reactor, settings.crl.grace_period),
            material.ca_pem,
            on_update,
        )

    def stapler(
        self,
        settings: ListenerSettings,
        material: TlsMaterial,
        globals_: GlobalSettings,
        on_change: Callable[[bytes], None],
    ) -> OcspStapler:
        assert settings.ocsp is not None and material.ocsp is not None
        return OcspStapler(
            settings.name,
            settings.ocsp,
            globals_.ocsp_cache_dir,
            self.reactor,
            self.http,
            material.ocsp,
            on_change=on_change,
        )

    def ocsp_client(
        self,
        settings: ListenerSettings,
        material: TlsMaterial,
        globals_: GlobalSettings,
        on_revoked: Callable[..., None],
    ) -> OcspClient:
        assert settings.client_ocsp is not None
        return OcspClient(
            settings.name,
            settings.client_ocsp,
            self.reactor,
            self.http,
            material.revocation_issuers,
            globals_.ocsp_cache_dir,
            self.cooperate,
            on_revoked=on_revoked,
        )

    def port(self, listener: ListenerHandle, settings: ListenerSettings) -> PortService:
        if settings.transport.tls:  # (TLS in the port's transports; a ws listener: plain)
            given = inherited_socket(self.inherited, settings.bind)
            endpoint = OwnTLSEndpoint(self.reactor, settings.bind, listener.creator, given)
            return port_service(listener, settings, endpoint)
        endpoint = listen_endpoint(self.reactor, self.inherited, settings.bind)
        return port_service(listener, settings, endpoint)
