"""The master of worker processes (``workers`` other than 1).

The process twistd starts binds every listener's sockets (one ``SO_REUSEPORT`` socket per
worker, before privileges are dropped: ``workers.group``), runs the CRL and OCSP services
once for all, and starts the workers (``gateway.workers.child``; ``workers.pool``). A worker
that dies is logged and started again with backoff; its socket stays open here, so its
share of new connections waits in the backlog rather than being refused. SIGTERM and
SIGHUP come here: the workers are drained and stopped, or reconfigured after the master.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from zope.interface import implementer

from gateway import timers
from gateway.config.model import GlobalSettings, ListenerSettings
from gateway.handover import Inherited
from gateway.parts import ListenerHandle
from gateway.prepare import Prepared
from gateway.process import GatewayState, ProcessRole
from gateway.reports import merge_reports
from gateway.revocation.crl_service import CrlCache, CrlService
from gateway.revocation.fetch import HttpFetcher
from gateway.revocation.ocsp_client import OcspClient
from gateway.revocation.ocsp_service import OcspStapler
from gateway.roles import IListenerRole, SingleProcess
from gateway.service import GatewayService
from gateway.status import ListenerStatus
from gateway.tls.material import TlsMaterial
from gateway.twisted_native import quiet_agent
from gateway.workers.group import SocketGroupService
from gateway.workers.pool import WorkerPool
from gateway.workers.slots import current_staples
from gateway.workers.sockets import usable_cpus


def worker_count(setting: int) -> int:
    return usable_cpus() if setting == 0 else setting


@implementer(IListenerRole)
class MasterRole:
    """The listeners of a master: CRLs and OCSP fetched once for every worker (as one
    process fetches them), the workers' sockets held, nothing relayed; each CRL update is
    published to the workers as a snapshot, each staple sent to them as bytes."""

    checks_brokers = False  # the workers check their brokers; the master relays nothing
    fetches = True

    def __init__(self, fetching: SingleProcess, workers: WorkerPool) -> None:
        self.fetching = fetching
        self.workers = workers

    def revocation_source(
        self,
        settings: ListenerSettings,
        material: TlsMaterial,
        globals_: GlobalSettings,
        cache: CrlCache | None,
        on_update: Callable[..., None],
    ) -> CrlService:
        return self.fetching.revocation_source(settings, material, globals_, cache, on_update)

    def stapler(
        self,
        settings: ListenerSettings,
        material: TlsMaterial,
        globals_: GlobalSettings,
        on_change: Callable[[bytes], None],
    ) -> OcspStapler:
        """``on_change`` is the listener's: it sends the staple of the parts in force to
        the workers (``staple_changed``), so an old stapler still stopping sends nothing
        stale."""
        return self.fetching.stapler(settings, material, globals_, on_change)

    def ocsp_client(
        self,
        settings: ListenerSettings,
        material: TlsMaterial,
        globals_: GlobalSettings,
        on_revoked: Callable[..., None],
    ) -> OcspClient:
        """The one client of every worker: the workers ask the master (``OcspQuery``),
        which asks the responder once per certificate for all of them."""
        return self.fetching.ocsp_client(settings, material, globals_, on_revoked)

    def port(self, listener: ListenerHandle, settings: ListenerSettings) -> SocketGroupService:
        workers = self.workers
        return SocketGroupService(
            workers.count, workers.affinity, settings, workers.serving, self.fetching.inherited
        )

    def revocation_updated(self, listener: ListenerHandle, sweep: Callable[[], Any]) -> None:
        # Nothing reaches the workers before the first round is over: a worker accepts
        # from its first snapshot on, and one holding only some of the CRLs (the small
        # root CRL while the large devices CRL is still loading) would refuse devices.
        crl = listener.parts().crl
        if crl is not None and crl.ready.called:
            self.workers.publisher(listener.name).publish(crl.cache)

    def staple_changed(self, listener: ListenerHandle) -> None:
        for name, der in current_staples(listener.parts()).items():
            self.workers.send_staple(listener.name, der, name)

    def status(self, listener: ListenerHandle, own: ListenerStatus) -> ListenerStatus:
        return merge_reports(own, self.workers.reports(listener.name))


def make_master_service(
    prepared: Prepared,
    reactor: Any,
    inherited: Inherited | None = None,
    told: socket.socket | None = None,
) -> GatewayService:
    """``inherited``, ``told``: sockets given to the process, and the gateway it took
    over from (``gateway.handover``)."""
    g = prepared.config.globals
    state = GatewayState(prepared)
    workers = WorkerPool(reactor, state, worker_count(g.workers), g.worker_affinity)
    http = HttpFetcher(quiet_agent(reactor), reactor)
    cooperator = timers.paced_cooperator(reactor)
    inherited = inherited if inherited is not None else Inherited()
    role = MasterRole(SingleProcess(reactor, http, cooperator.cooperate, None, inherited), workers)
    process = ProcessRole(
        role, workers=workers, cooperator=cooperator, inherited=inherited, told=told
    )
    return GatewayService(prepared, reactor, process, state)


__all__ = ["MasterRole", "make_master_service", "worker_count"]
