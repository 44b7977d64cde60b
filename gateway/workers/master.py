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
from twisted.application.internet import backoffPolicy
from twisted.internet import defer, error, protocol, task, threads
from twisted.internet.error import CannotListenError
from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.config.model import GlobalSettings, ListenerSettings
from gateway.errors import describe_error
from gateway.ports import ListenError
from gateway.prepare import Prepared
from gateway.revocation.crl import LoadedCrl
from gateway.revocation.crl_service import CrlCache, CrlService
from gateway.revocation.fetch import HttpFetcher
from gateway.revocation.ocsp_service import OcspStapler
from gateway.revocation.snapshot import encode_snapshot, map_snapshot
from gateway.roles import IListenerRole, SingleProcess
from gateway.service import GatewayService, ListenerService, ProcessRole
from gateway.status import (
    ListenerStatus,
    WorkerReport,
    WorkerState,
    WorkerStatus,
    merge_reports,
)
from gateway.tls.material import TlsMaterial
from gateway.twisted_native import quiet_http_client
from gateway.workers import commands as c
from gateway.workers.sockets import bind_group, close_all, steer_by_address, usable_cpus

log = Logger()

RESTART_FIRST = 0.5  # seconds before the first restart of a worker that died
RESTART_MAX = 30.0  # backoff doubles up to this
RESTART_RESET = 60.0  # a worker that lived this long restarts after RESTART_FIRST again
# Twisted's own backoff (as ProcessMonitor's restarts): 0.5 s, doubling, at most 30 s.
restart_delay = backoffPolicy(RESTART_FIRST, RESTART_MAX, 2.0, jitter=lambda: 0.0)
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

    def __init__(self, workers: WorkerPool, settings: ListenerSettings) -> None:
        self.workers = workers
        self.listener_name = settings.name
        self.bind_address = settings.bind
        self.count = workers.count
        affinity = workers.affinity
        self.by_address = affinity == "address" or (
            affinity == "auto" and not settings.front.proxy_protocol
        )
        self.port: _Group | None = None

    def bind(self) -> defer.Deferred[_Group]:
        try:
            return defer.succeed(self._listen())
        except ListenError as e:
            return defer.fail(e)

    def _listen(self) -> _Group:
        if self.port is not None:
            return self.port
        host, port = self.bind_address
        try:
            sockets = bind_group(host, port, self.count)
        except OSError as e:
            raise ListenError(
                self.listener_name, self.bind_address, CannotListenError(host, port, e)
            ) from None
        steered = steer_by_address(sockets) if self.by_address else False
        if self.by_address and not steered:
            log.warn(
                "listener {listener}: the kernel refused the address-affinity program; "
                "connections are spread by its hash (TLS sessions resume less often)",
                listener=self.listener_name,
            )
        self.port = _Group(sockets, steered)
        return self.port

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
        return self.port is not None and self.workers.serving(self.listener_name) > 0

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


# -- the master's role ---------------------------------------------------------------------------


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
    ) -> CrlService:
        return self.fetching.revocation_source(settings, material, globals_, cache)

    def stapler(
        self, settings: ListenerSettings, material: TlsMaterial, globals_: GlobalSettings
    ) -> OcspStapler:
        stapler = self.fetching.stapler(settings, material, globals_)
        name = settings.name

        def changed(der: bytes) -> None:
            ls = self.workers.listener(name)
            if ls is not None and ls.parts.stapler is stapler:
                self.workers.send_staple(name, der)

        stapler.on_change = changed
        return stapler

    def port(self, listener: ListenerService, settings: ListenerSettings) -> SocketGroupService:
        return SocketGroupService(self.workers, settings)

    def revocation_updated(self, listener: ListenerService) -> None:
        revocation = listener.parts.revocation
        if revocation is not None:
            self.workers.publisher(listener.parts.name).publish(revocation.cache)

    def staple_changed(self, listener: ListenerService) -> None:
        self.workers.send_staple(listener.parts.name, current_staple(listener))

    def status(self, listener: ListenerService, own: ListenerStatus) -> ListenerStatus:
        return merge_reports(own, self.workers.reports(listener.parts.name))


def current_staple(listener: ListenerService) -> bytes:
    stapler = listener.parts.stapler
    current = stapler.current if stapler is not None else None
    return current.der if current is not None else b""


def make_master_service(prepared: Prepared, reactor: Any) -> GatewayService:
    g = prepared.config.globals
    workers = WorkerPool(reactor, None, worker_count(g.workers), g.worker_affinity)
    http = HttpFetcher(quiet_http_client(reactor), reactor)
    role = MasterRole(SingleProcess(reactor, http), workers)
    top = GatewayService(prepared, reactor, ProcessRole(role, workers=workers))
    workers.gateway = top
    return top


# -- the workers ----------------------------------------------------------------------------------


@attrs.define(eq=False)
class WorkerSlot:
    index: int
    process: Any = None
    channel: MasterChannel | None = None
    pid: int | None = None
    state: WorkerState = WorkerState.STARTING
    restarts: int = 0
    failures: int = 0  # consecutive short lives (the backoff)
    started: float | None = None
    report: WorkerReport | None = None
    sent: set[tuple[str, str, int]] = attrs.Factory(set)  # sockets this process has
    last_exit: str | None = None
    timer: Any = None
    ended: defer.Deferred[None] | None = None
    # What is sent to this process goes in turn (a reload during its start waits).
    turn: defer.DeferredLock = attrs.Factory(defer.DeferredLock)


class WorkerPool(service.Service):
    """Starts, watches, restarts, reconfigures and stops the worker processes."""

    name = "workers"

    def __init__(
        self, reactor: Any, gateway: GatewayService | None, count: int, affinity: str
    ) -> None:
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

    def listener(self, name: str) -> ListenerService | None:
        return self.gateway.listeners.get(name) if self.gateway is not None else None

    def serving(self, listener: str) -> int:
        return sum(
            1
            for s in self.slots
            if s.state is WorkerState.SERVING
            and s.report is not None
            and (r := s.report.listeners.get(listener)) is not None
            and r.accepting
        )

    def reports(self, listener: str) -> list[Any]:
        return [
            r
            for s in self.slots
            if s.report is not None and (r := s.report.listeners.get(listener)) is not None
        ]

    def status(self) -> tuple[WorkerStatus, ...]:
        out = []
        for s in self.slots:
            serving = s.state is WorkerState.SERVING and s.report is not None
            listeners = list(s.report.listeners.values()) if serving and s.report else []
            out.append(
                WorkerStatus(
                    s.index,
                    s.pid,
                    s.state.value,
                    s.restarts,
                    s.started,
                    sum(r.stats.active for r in listeners),
                    sum(r.stats.accepted for r in listeners),
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
        if not self.stopping and self.gateway is not None:
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
        slot.state = WorkerState.STARTING
        slot.sent = set()
        slot.report = None
        slot.turn = defer.DeferredLock()
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
            slot.state = WorkerState.STOPPED
            log.info("worker {index} (pid {pid}) {how}", index=slot.index, pid=slot.pid, how=how)
        else:
            lived = self.reactor.seconds() - (slot.started or 0.0)
            slot.failures = 0 if lived >= RESTART_RESET else slot.failures + 1
            delay = restart_delay(max(0, slot.failures - 1))
            slot.state = WorkerState.RESTARTING
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

    def _groups(self) -> list[tuple[ListenerService, SocketGroupService]]:
        listeners = self.gateway.listeners.values() if self.gateway is not None else ()
        return [(ls, ls.port) for ls in listeners if isinstance(ls.port, SocketGroupService)]

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
        for ls, group in self._groups():
            if group.port is None:
                continue
            name = ls.parts.name
            host, port = group.bind_address
            key = (name, host, port)
            if key in slot.sent or slot.index >= len(group.port.sockets):
                continue
            yield channel.callRemote(
                c.Listen,
                listener=name,
                host=host,
                port=port,
                fd=group.port.sockets[slot.index].fileno(),
            )
            slot.sent.add(key)
            snapshot = self.publisher(name).path
            if snapshot is not None:
                yield channel.callRemote(c.CrlSnapshot, listener=name, path=snapshot)
            yield channel.callRemote(c.Staple, listener=name, der=_clip(current_staple(ls)))
        answer = yield channel.callRemote(
            c.Configure, path=prepared.config.path, generation=self.generation
        )
        return answer

    def _in_turn(self, slot: WorkerSlot, prepared: Prepared) -> defer.Deferred[Any]:
        """``_configure``, after whatever this worker is being sent already (a reload during
        a worker's start must not interleave its files with the start's)."""
        return slot.turn.run(self._configure, slot, prepared)

    def _started(self, slot: WorkerSlot) -> None:
        assert self.gateway is not None
        d = self._in_turn(slot, self.gateway.prepared)

        def answered(answer: dict[str, Any]) -> None:
            if answer.get("ok"):
                slot.state = WorkerState.SERVING
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
            if slot.state is WorkerState.SERVING:
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
            slot.report = WorkerReport.from_json(json.loads(b"".join(parts)))
        except (error.ConnectionDone, error.ConnectionLost, amp.ProtocolSwitched):
            pass  # a worker going away: its next life reports again
        except Exception:
            log.failure("worker {index}: its report could not be read", index=slot.index)

    # -- from workers --

    def discover(self, listener: str, url: str) -> None:
        ls = self.listener(listener)
        if ls is not None and ls.parts.crl is not None:
            ls.parts.crl.discover(url)

    def when_attempted(self, listener: str, url: str) -> defer.Deferred[None]:
        ls = self.listener(listener)
        if ls is None or ls.parts.crl is None:
            return defer.succeed(None)
        publisher = self.publisher(listener)
        d = ls.parts.crl.when_attempted(url)
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


__all__ = ["MasterRole", "WorkerPool", "make_master_service"]
