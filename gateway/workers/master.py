"""The master of worker processes (``workers`` other than 1).

The process twistd starts binds every listener's sockets (one ``SO_REUSEPORT`` socket per
worker, before privileges are dropped), runs the CRL and OCSP services once for all, and
starts the workers (``gateway.workers.child``) with Twisted's process support. Each worker
gets, over its channel (an AMP socket pair): the files the configuration names as read
here, its sockets, each listener's CRL snapshot and staple, then ``Configure``. A worker
that dies is logged and started again with backoff; its socket stays open here, so its
share of new connections waits in the backlog rather than being refused. SIGTERM and
SIGHUP come here: the workers are drained and stopped, or reconfigured after the master.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
from typing import Any

import attrs
from twisted.application import service
from twisted.internet import defer, error, protocol, task, threads
from twisted.internet.error import CannotListenError
from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure

from gateway.config.model import GlobalSettings, ListenerSettings
from gateway.errors import describe_error
from gateway.monitor import Monitor
from gateway.prepare import Prepared
from gateway.revocation.crl import LoadedCrl
from gateway.revocation.crl_service import CrlCache
from gateway.revocation.snapshot import encode_snapshot, map_snapshot
from gateway.service import (
    GatewayService,
    ListenError,
    ListenerService,
    PortService,
    build_gateway,
)
from gateway.status import (
    BrokerStatus,
    CrlCheckStatus,
    GatewayStatus,
    ListenerStatus,
    WorkerStatus,
    merge_stats,
    stats_from_dict,
)
from gateway.tls.material import TlsMaterial
from gateway.workers import commands as c
from gateway.workers.sockets import bind_group, close_all, steer_by_address, usable_cpus

log = Logger()

RESTART_FIRST = 0.5  # seconds before the first restart of a worker that died
RESTART_MAX = 30.0  # backoff doubles up to this
RESTART_RESET = 60.0  # a worker that lived this long restarts after RESTART_FIRST again
REPORT_INTERVAL = 1.0  # how often the master gathers its workers' counters
STOP_MARGIN = 5.0  # after the shutdown drain, then a worker still running is killed


def worker_count(setting: int) -> int:
    return usable_cpus() if setting == 0 else setting


# -- sockets -------------------------------------------------------------------------------------


class _Group:
    """The listening sockets of one address (one per worker); ``stopListening`` closes them."""

    def __init__(self, sockets: list[socket.socket], steered: bool) -> None:
        self.sockets = sockets
        self.steered = steered
        self.factory: Any = None

    def stopListening(self) -> defer.Deferred[None]:
        close_all(self.sockets)
        self.sockets = []
        return defer.succeed(None)


class SocketGroupService(service.Service):
    """In the master, a listener's port: its sockets, bound in privilegedStartService and
    held while the master lives; the workers accept on them."""

    def __init__(self, listener: MasterListenerService, settings: ListenerSettings) -> None:
        self.owner = listener
        self.listener_name = settings.name
        self.bind = settings.bind
        self.count = listener.workers.count
        affinity = listener.workers.affinity
        self.by_address = affinity == "address" or (
            affinity == "auto" and not settings.front.proxy_protocol
        )
        self.factory: Any = listener.tls_factory  # no connections here: drains at once
        self.port: _Group | None = None

    def _listen(self) -> None:
        if self.port is not None:
            return
        host, port = self.bind
        try:
            sockets = bind_group(host, port, self.count)
        except OSError as e:
            raise ListenError(
                self.listener_name, self.bind, CannotListenError(host, port, e)
            ) from None
        steered = steer_by_address(sockets) if self.by_address else False
        if self.by_address and not steered:
            log.warn(
                "listener {listener}: the kernel refused the address-affinity program; "
                "connections are spread by its hash (TLS sessions resume less often)",
                listener=self.listener_name,
            )
        self.port = _Group(sockets, steered)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()

    def stopService(self) -> None:
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            port.stopListening()

    @property
    def accepting(self) -> bool:
        return self.port is not None and self.owner.workers.serving(self.listener_name) > 0

    @property
    def waiting_reason(self) -> str:
        if self.port is None:
            return "not listening"
        return "" if self.accepting else "no worker serving it yet"


# -- the CRL snapshots ---------------------------------------------------------------------------


def _write_snapshot(path: str, chunks: list[bytes | memoryview]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
    os.replace(tmp, path)


class CrlPublisher:
    """Writes a listener's CRLs to a new snapshot file (in a thread) after each change,
    tells every worker, then removes the previous file (mappings of it stay valid). The
    master then holds the mapped copy too: the CRL is in memory once, in the page cache."""

    def __init__(self, pool: WorkerPool, listener: str) -> None:
        self.pool = pool
        self.listener = listener
        self.path: str | None = None
        self._seq = 0
        self._busy = False
        self._again: CrlCache | None = None
        self._waiters: list[defer.Deferred[None]] = []

    def publish(self, cache: CrlCache) -> None:
        if self._busy:
            self._again = cache
            return
        self._busy = True
        items = cache.held()
        self._seq += 1
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in self.listener)
        path = os.path.join(self.pool.runtime_dir(), f"crl-{safe}-{self._seq}.snapshot")
        reactor = self.pool.reactor
        d = threads.deferToThreadPool(
            reactor, reactor.getThreadPool(), _write_snapshot, path, encode_snapshot(items)
        )
        d.addCallback(lambda _: self._written(cache, items, path))
        d.addErrback(self._failed)
        d.addBoth(lambda _: self._done())

    def _written(
        self, cache: CrlCache, items: list[tuple[str, LoadedCrl]], path: str
    ) -> defer.Deferred[Any]:
        mapped = map_snapshot(path)
        cache.adopt([(old, new) for (_, old), (_, new) in zip(items, mapped, strict=True)])
        previous, self.path = self.path, path
        sent = self.pool.send_crl(self.listener, path)

        def remove(_: object) -> None:
            if previous is not None:
                try:
                    os.unlink(previous)
                except OSError:
                    pass

        return sent.addBoth(remove)

    def _failed(self, reason: Failure) -> None:
        log.error(
            "crl {listener}: could not hand the CRLs to the workers ({error}); they keep "
            "the previous ones",
            listener=self.listener,
            error=describe_error(reason.value),  # type: ignore[arg-type]
        )

    def _done(self) -> None:
        self._busy = False
        again, self._again = self._again, None
        if again is not None:
            self.publish(again)
            return
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.callback(None)

    def flushed(self) -> defer.Deferred[None]:
        """Fires once what is held now has reached the workers."""
        if not self._busy:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(d)
        return d


# -- the master's listener -----------------------------------------------------------------------


class MasterListenerService(ListenerService):
    """A listener in the master: its sockets, its CRL and OCSP services (once for every
    worker), and its status added up from the workers' counters."""

    checks_brokers = False  # the workers check their brokers; the master relays nothing

    def __init__(
        self,
        workers: WorkerPool,
        listener: ListenerSettings,
        material: TlsMaterial,
        globals_: GlobalSettings,
        reactor: Any,
    ) -> None:
        self.workers = workers
        self.publisher = workers.publisher(listener.name)
        super().__init__(listener, material, globals_, reactor)
        if self.crl_service is not None:
            self.crl_service.ready.addCallback(lambda _: self.revocation_updated())

    def _port_service(self, listener: ListenerSettings) -> PortService:
        return SocketGroupService(self, listener)  # type: ignore[return-value]

    def _build_stapler(
        self, listener: ListenerSettings, material: TlsMaterial, globals_: GlobalSettings
    ) -> Any:
        stapler = super()._build_stapler(listener, material, globals_)
        if stapler is not None:
            name = listener.name

            def changed(der: bytes) -> None:
                if self.stapler is stapler:
                    self.workers.send_staple(name, der)

            stapler.on_change = changed
        return stapler

    def revocation_updated(self, _crls: object = None) -> None:
        if self.revocation is not None:
            self.publisher.publish(self.revocation.cache)

    def reconfigure(self, *args: Any) -> defer.Deferred[None]:
        d = super().reconfigure(*args)

        def after(_: object) -> None:
            if self.stapler is not None:
                current = self.stapler.current
                self.workers.send_staple(self.listener.name, current.der if current else b"")

        return d.addCallback(after)

    def current_staple(self) -> bytes:
        current = self.stapler.current if self.stapler is not None else None
        return current.der if current is not None else b""

    def status(self) -> ListenerStatus:
        base = super().status()
        reports = self.workers.reports(self.listener.name)
        stats = merge_stats(self.listener.name, [stats_from_dict(r["stats"]) for r in reports])
        crl = base.crl
        if crl is not None:
            counts: dict[str, int] = {}
            for r in reports:
                for k, v in r.get("crl_counts", {}).items():
                    counts[k] = counts.get(k, 0) + int(v)
            crl = CrlCheckStatus(crl.held, counts, crl.sources)
        ocsp = base.ocsp
        if ocsp is not None:
            ocsp = attrs.evolve(ocsp, staples_sent=sum(r.get("staples_sent", 0) for r in reports))
        brokers: dict[str, list[Any]] = {}
        for r in reports:
            for name, up, active, sessions, failures, last_error in r.get("brokers", []):
                b = brokers.setdefault(name, [name, False, 0, 0, 0, None])
                b[1] = b[1] or up
                b[2] += active
                b[3] += sessions
                b[4] += failures
                b[5] = b[5] or last_error
        return attrs.evolve(
            base,
            stats=stats,
            crl=crl,
            ocsp=ocsp,
            brokers=tuple(BrokerStatus(*b) for b in brokers.values()) or base.brokers,
        )


class MasterGateway(GatewayService):
    """The top of the master's tree: the listeners (sockets, CRL, OCSP), the workers, the
    monitor and the admin listener."""

    def __init__(self, prepared: Prepared, reactor: Any) -> None:
        super().__init__(prepared, reactor)
        g = prepared.config.globals
        self.workers = WorkerPool(reactor, self, worker_count(g.workers), g.worker_affinity)
        self.monitor = Monitor(
            reactor,
            g.stats_log_interval,
            lambda: [ls.status() for ls in self.listeners.values()],
            self.workers.status,
        )

    def new_listener(
        self, listener: ListenerSettings, material: TlsMaterial, globals_: GlobalSettings
    ) -> ListenerService:
        return MasterListenerService(self.workers, listener, material, globals_, self.reactor)

    def status(self) -> GatewayStatus:
        return attrs.evolve(super().status(), workers=self.workers.status())

    def _apply(self, prepared: Prepared) -> defer.Deferred[dict[str, Any]]:
        if prepared.config.globals.workers != self.config.globals.workers:
            log.warn("reload: a new value of workers takes effect at the next restart")
        return super()._apply(prepared)

    def _after_apply(self, prepared: Prepared) -> defer.Deferred[Any]:
        return self.workers.configure_all(prepared)

    def stopService(self) -> defer.Deferred[Any]:
        # The workers drain and stop while the master's own services stop (its copies of
        # the sockets close: the workers hold theirs until they stop).
        workers = self.workers.stop(self.config.globals.shutdown_drain)
        own = defer.maybeDeferred(super().stopService)
        return defer.gatherResults([workers, own], consumeErrors=True)


def make_master_service(prepared: Prepared, reactor: Any) -> GatewayService:
    top = MasterGateway(prepared, reactor)
    build_gateway(top, prepared)
    top.workers.setServiceParent(top)
    return top


# -- the workers ----------------------------------------------------------------------------------


@attrs.define(eq=False)
class WorkerSlot:
    index: int
    process: Any = None
    channel: MasterChannel | None = None
    pid: int | None = None
    state: str = "starting"
    restarts: int = 0
    failures: int = 0  # consecutive short lives (the backoff)
    started: float | None = None
    report: dict[str, Any] = attrs.Factory(dict)
    sent: set[tuple[str, str, int]] = attrs.Factory(set)  # sockets this process has
    last_exit: str | None = None
    timer: Any = None
    ended: defer.Deferred[None] | None = None
    turn: defer.Deferred[Any] | None = None  # fires when what is being sent is sent


class WorkerPool(service.Service):
    """Starts, watches, restarts, reconfigures and stops the worker processes."""

    name = "workers"

    def __init__(self, reactor: Any, gateway: MasterGateway, count: int, affinity: str) -> None:
        self.reactor = reactor
        self.gateway = gateway
        self.count = count
        self.affinity = affinity
        self.slots = [WorkerSlot(i) for i in range(count)]
        self.stopping = False
        self._publishers: dict[str, CrlPublisher] = {}
        self._runtime: str | None = None
        self._owns_runtime = False
        self._poll: task.LoopingCall | None = None
        self.generation = 0

    # -- what the listeners use --

    def publisher(self, listener: str) -> CrlPublisher:
        if listener not in self._publishers:
            self._publishers[listener] = CrlPublisher(self, listener)
        return self._publishers[listener]

    def runtime_dir(self) -> str:
        """Where the CRL snapshots go: systemd's RUNTIME_DIRECTORY, else a private directory
        of our own (in /dev/shm where it exists: memory, never a disk)."""
        if self._runtime is None:
            given = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
            if given and os.path.isdir(given):
                self._runtime = tempfile.mkdtemp(prefix="mqttgw-", dir=given)
            else:
                shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
                self._runtime = tempfile.mkdtemp(prefix="mqttgw-", dir=shm)
            self._owns_runtime = True
        return self._runtime

    def serving(self, listener: str) -> int:
        return sum(
            1
            for s in self.slots
            if s.state == "serving"
            and s.report.get("listeners", {}).get(listener, {}).get("accepting")
        )

    def reports(self, listener: str) -> list[dict[str, Any]]:
        return [
            r for s in self.slots if (r := s.report.get("listeners", {}).get(listener)) is not None
        ]

    def status(self) -> tuple[WorkerStatus, ...]:
        out = []
        for s in self.slots:
            listeners = s.report.get("listeners", {}).values() if s.state == "serving" else ()
            out.append(
                WorkerStatus(
                    s.index,
                    s.pid,
                    s.state,
                    s.restarts,
                    s.started,
                    sum(int(r["stats"]["active"]) for r in listeners),
                    sum(int(r["stats"]["accepted"]) for r in listeners),
                    s.last_exit,
                )
            )
        return tuple(out)

    # -- lifecycle --

    def startService(self) -> None:
        super().startService()
        log.info(
            "starting {count} worker process(es) (affinity {affinity})",
            count=self.count,
            affinity=self.affinity,
        )
        for slot in self.slots:
            self._spawn(slot)
        self._poll = task.LoopingCall(self._gather)
        self._poll.clock = self.reactor
        self._poll.start(REPORT_INTERVAL, now=False)

    def stop(self, drain: float) -> defer.Deferred[None]:
        """SIGTERM to every worker (each drains for ``drain``), then SIGKILL what remains."""
        self.stopping = True
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        waits = []
        for slot in self.slots:
            if slot.timer is not None and slot.timer.active():
                slot.timer.cancel()
            if slot.process is not None and slot.ended is not None:
                waits.append(slot.ended)
                _signal(slot.process, "TERM")
        done = defer.gatherResults(waits, consumeErrors=True)

        def kill() -> None:
            for slot in self.slots:
                if slot.process is not None:
                    log.warn("worker {index} did not stop in time: killed", index=slot.index)
                    _signal(slot.process, "KILL")

        timer = self.reactor.callLater(drain + STOP_MARGIN, kill)
        done.addBoth(lambda _: timer.active() and timer.cancel())
        return done.addBoth(lambda _: self._remove_runtime())

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if not self.stopping:
            return self.stop(self.gateway.config.globals.shutdown_drain)
        return None

    def _remove_runtime(self) -> None:
        if self._runtime is not None and self._owns_runtime:
            shutil.rmtree(self._runtime, ignore_errors=True)

    def _spawn(self, slot: WorkerSlot) -> None:
        if self.stopping:
            return
        slot.timer = None
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        slot.state = "starting"
        slot.sent = set()
        slot.report = {}
        slot.ended = defer.Deferred()
        try:
            slot.process = self.reactor.spawnProcess(
                WorkerProcess(self, slot),
                sys.executable,
                [sys.executable, "-m", "gateway.workers.child", str(slot.index)],
                env=env,
                childFDs={0: "w", 1: "r", 2: "r", 3: child_end.fileno()},
            )
        finally:
            child_end.close()
        slot.pid = slot.process.pid
        slot.started = self.reactor.seconds()
        channel = MasterChannel(self, slot)
        self.reactor.adoptStreamConnection(
            parent_end.fileno(), socket.AF_UNIX, _OneProtocol(channel)
        )
        parent_end.close()

    def _ended(self, slot: WorkerSlot, reason: Failure) -> None:
        value = reason.value
        if isinstance(value, error.ProcessTerminated) and value.signal is not None:
            how = f"killed by signal {value.signal}"
        else:
            how = f"exited with status {getattr(value, 'exitCode', None) or 0}"
        slot.last_exit = how
        slot.process = None
        slot.channel = None
        ended, slot.ended = slot.ended, None
        if self.stopping:
            slot.state = "stopped"
            log.info("worker {index} (pid {pid}) {how}", index=slot.index, pid=slot.pid, how=how)
        else:
            lived = self.reactor.seconds() - (slot.started or 0.0)
            slot.failures = 0 if lived >= RESTART_RESET else slot.failures + 1
            delay = min(RESTART_MAX, RESTART_FIRST * 2 ** max(0, slot.failures - 1))
            slot.state = "restarting"
            slot.restarts += 1
            log.error(
                "worker {index} (pid {pid}) {how} after {lived:.1f}s; restarting it in "
                "{delay:g}s (the other workers keep serving)",
                index=slot.index,
                pid=slot.pid,
                how=how,
                lived=lived,
                delay=delay,
            )
            slot.timer = self.reactor.callLater(delay, self._spawn, slot)
        if ended is not None:
            ended.callback(None)

    # -- talking to workers --

    def _listeners(self) -> list[MasterListenerService]:
        return [
            ls for ls in self.gateway.listeners.values() if isinstance(ls, MasterListenerService)
        ]

    @defer.inlineCallbacks
    def _configure(self, slot: WorkerSlot, prepared: Prepared) -> Any:
        """Send one worker what it needs for ``prepared``, then Configure it."""
        channel = slot.channel
        if channel is None:
            return {"ok": False, "text": "no channel"}
        for path, (data, mode) in prepared.files.items():
            parts = c.pieces(data)
            for i, part in enumerate(parts):
                yield channel.callRemote(
                    c.FilePart, path=path, mode=mode, data=part, last=i == len(parts) - 1
                )
        for ls in self._listeners():
            group = ls.port_service
            if not isinstance(group, SocketGroupService) or group.port is None:
                continue
            host, port = group.bind
            key = (ls.listener.name, host, port)
            if key in slot.sent or slot.index >= len(group.port.sockets):
                continue
            yield channel.callRemote(
                c.Listen,
                listener=ls.listener.name,
                host=host,
                port=port,
                fd=group.port.sockets[slot.index].fileno(),
            )
            slot.sent.add(key)
            if ls.publisher.path is not None:
                yield channel.callRemote(
                    c.CrlSnapshot, listener=ls.listener.name, path=ls.publisher.path
                )
            yield channel.callRemote(
                c.Staple, listener=ls.listener.name, der=_clip(ls.current_staple())
            )
        answer = yield channel.callRemote(
            c.Configure, path=prepared.config.path, generation=self.generation
        )
        return answer

    def _in_turn(self, slot: WorkerSlot, prepared: Prepared) -> defer.Deferred[Any]:
        """``_configure``, after whatever this worker is being sent already (a reload during
        a worker's start must not interleave its files with the start's)."""
        previous = slot.turn
        mine: defer.Deferred[Any] = defer.Deferred()
        slot.turn = mine

        def done(result: object) -> object:
            mine.callback(None)
            return result

        def go(_: object) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = self._configure(slot, prepared)
            return d.addBoth(done)

        if previous is None or previous.called:
            return go(None)
        after: defer.Deferred[Any] = defer.Deferred()
        previous.addBoth(lambda _: go(None).chainDeferred(after))
        return after

    def _started(self, slot: WorkerSlot) -> None:
        slot.turn = None
        d = self._in_turn(slot, self.gateway.prepared)

        def answered(answer: dict[str, Any]) -> None:
            if answer.get("ok"):
                slot.state = "serving"
                log.info("worker {index} (pid {pid}) serving", index=slot.index, pid=slot.pid)
                self._gather_one(slot)
            else:
                log.error(
                    "worker {index} could not start: {text}", index=slot.index, text=answer["text"]
                )
                _signal(slot.process, "KILL")

        def failed(reason: Failure) -> None:
            if slot.process is not None:
                log.error(
                    "worker {index}: start failed ({error})",
                    index=slot.index,
                    error=describe_error(reason.value),  # type: ignore[arg-type]
                )
                _signal(slot.process, "KILL")

        d.addCallbacks(answered, failed)

    def configure_all(self, prepared: Prepared) -> defer.Deferred[Any]:
        """A reload the master applied: every serving worker applies it too."""
        self.generation += 1
        runs = []
        for slot in self.slots:
            if slot.channel is None:
                continue  # a starting worker gets the new configuration when it starts
            d = self._in_turn(slot, prepared)

            def answered(answer: dict[str, Any], slot: WorkerSlot = slot) -> None:
                if not answer.get("ok"):
                    log.error(
                        "worker {index} refused the reload ({text}); restarting it",
                        index=slot.index,
                        text=answer.get("text"),
                    )
                    _signal(slot.process, "TERM")

            runs.append(d.addCallback(answered).addErrback(lambda _: None))
        return defer.gatherResults(runs)

    def send_crl(self, listener: str, path: str) -> defer.Deferred[Any]:
        runs = []
        for slot in self.slots:
            if slot.channel is not None and any(k[0] == listener for k in slot.sent):
                d = slot.channel.callRemote(c.CrlSnapshot, listener=listener, path=path)
                runs.append(d.addErrback(lambda _: None))
        return defer.gatherResults(runs)

    def send_staple(self, listener: str, der: bytes) -> None:
        for slot in self.slots:
            if slot.channel is not None and any(k[0] == listener for k in slot.sent):
                slot.channel.callRemote(c.Staple, listener=listener, der=_clip(der)).addErrback(
                    lambda _: None
                )

    def _gather(self) -> None:
        for slot in self.slots:
            if slot.state == "serving":
                self._gather_one(slot)

    @defer.inlineCallbacks
    def _gather_one(self, slot: WorkerSlot) -> Any:
        channel = slot.channel
        if channel is None:
            return
        parts, page = [], 0
        try:
            while True:
                answer = yield channel.callRemote(c.Report, page=page)
                parts.append(answer["data"])
                if not answer["more"]:
                    break
                page += 1
            slot.report = json.loads(b"".join(parts))
        except Exception:
            pass  # a worker going away: its next life reports again

    # -- from workers --

    def discover(self, listener: str, url: str) -> None:
        ls = self.gateway.listeners.get(listener)
        if ls is not None and ls.crl_service is not None:
            ls.crl_service.discover(url)

    def when_attempted(self, listener: str, url: str) -> defer.Deferred[None]:
        ls = self.gateway.listeners.get(listener)
        if not isinstance(ls, MasterListenerService) or ls.crl_service is None:
            return defer.succeed(None)
        publisher = ls.publisher
        d = ls.crl_service.when_attempted(url)
        return d.addBoth(lambda _: publisher.flushed())


def _clip(der: bytes) -> bytes:
    """An AMP value holds 65,535 bytes; a real OCSP response is a few KB."""
    return der if len(der) <= 65535 else b""


def _signal(process: Any, name: str) -> None:
    if process is None:
        return
    try:
        process.signalProcess(name)
    except (error.ProcessExitedAlready, OSError):
        pass


class _OneProtocol(protocol.Factory):
    def __init__(self, proto: protocol.Protocol) -> None:
        self.proto = proto

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        return self.proto


class MasterChannel(amp.AMP):
    """The master's end of one worker's channel."""

    def __init__(self, pool: WorkerPool, slot: WorkerSlot) -> None:
        super().__init__()
        self.pool = pool
        self.slot = slot

    def connectionMade(self) -> None:
        super().connectionMade()
        self.slot.channel = self
        self.pool._started(self.slot)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        super().connectionLost(reason)
        if self.slot.channel is self:
            self.slot.channel = None

    @c.Discover.responder
    def discover(self, listener: str, url: str) -> dict[str, Any]:
        self.pool.discover(listener, url)
        return {}

    @c.WhenAttempted.responder
    def when_attempted(self, listener: str, url: str) -> defer.Deferred[dict[str, Any]]:
        return self.pool.when_attempted(listener, url).addCallback(lambda _: {})


_LEVELS = {level.name: level for level in LogLevel.iterconstants()}


class WorkerProcess(protocol.ProcessProtocol):
    """A worker's process: its log events (JSON on its stderr) join the master's log,
    tagged with the worker's index; its end starts the restart."""

    MAX_RECORD = 1 << 20

    def __init__(self, pool: WorkerPool, slot: WorkerSlot) -> None:
        self.pool = pool
        self.slot = slot
        self._buffer = b""

    def connectionMade(self) -> None:
        self.transport.closeStdin()  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        self._text(data)

    def errReceived(self, data: bytes) -> None:
        """Records are RS + JSON + newline (JSON text holds no raw newline); anything else
        (a crash before the worker's logging started) is passed on line by line."""
        self._buffer += data
        buf = self._buffer
        while buf:
            if buf[:1] == b"\x1e":
                end = buf.find(b"\n")
                if end < 0:
                    if len(buf) > self.MAX_RECORD:  # not a record: pass it on, do not hoard
                        self._text(buf)
                        buf = b""
                    break
                self._record(buf[1:end])
                buf = buf[end + 1 :]
            else:
                end = buf.find(b"\x1e")
                if end < 0:
                    end = buf.rfind(b"\n") + 1
                    if end == 0 and len(buf) > self.MAX_RECORD:
                        end = len(buf)
                if end == 0:
                    break
                self._text(buf[:end])
                buf = buf[end:]
        self._buffer = buf

    def _record(self, record: bytes) -> None:
        text = record.strip()
        if not text:
            return
        try:
            when, level, namespace, line = json.loads(text)
            log_level = _LEVELS[level]
        except Exception:
            self._text(record)
            return
        index = self.slot.index
        globalLogPublisher(
            {
                "log_time": float(when),
                "log_level": log_level,
                "log_namespace": str(namespace),
                "log_system": f"worker {index}",
                # One field to format (the master re-emits every line of every worker);
                # the worker and its text stay apart for structured observers.
                "log_format": "{mqttgw_line}",
                "mqttgw_line": f"worker {index}: {line}",
                "mqttgw_worker": index,
                "mqttgw_text": str(line),
            }
        )

    def _text(self, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip():
                log.warn("worker {index}: {line}", index=self.slot.index, line=line)

    def processEnded(self, reason: Failure) -> None:
        if self._buffer:
            self._text(self._buffer)
            self._buffer = b""
        self.pool._ended(self.slot, reason)


__all__ = ["MasterGateway", "WorkerPool", "make_master_service"]
