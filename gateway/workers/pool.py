"""The worker processes of a master: started with Twisted's process support, each given
its files, sockets, CRL snapshots and staples over an AMP channel, then ``Configure``;
watched (a report every second), restarted with backoff when one dies, reconfigured on a
reload, stopped (drained) with the master."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from typing import Any

from twisted.application import service
from twisted.application.internet import backoffPolicy
from twisted.internet import defer, error
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from gateway import timers
from gateway.choices import Affinity
from gateway.errors import describe_error
from gateway.listener import ListenerService
from gateway.parts import ListenerParts
from gateway.prepare import Prepared
from gateway.process import GatewayState
from gateway.reports import WorkerReport
from gateway.status import WorkerState, WorkerStatus
from gateway.workers import commands as c
from gateway.workers.channel import MasterAnswers, MasterChannel, OneProtocol, clip
from gateway.workers.group import SocketGroupService
from gateway.workers.logrelay import WorkerProcess
from gateway.workers.publisher import CrlPublisher
from gateway.workers.slots import WorkerSlot, current_staples, runtime_directory, signal_process

log = Logger()

RESTART_FIRST = 0.5  # seconds before the first restart of a worker that died
RESTART_MAX = 30.0  # backoff doubles up to this
RESTART_RESET = 60.0  # a worker that lived this long restarts after RESTART_FIRST again
# Twisted's own backoff (as ProcessMonitor's restarts): 0.5 s, doubling, at most 30 s.
restart_delay = backoffPolicy(RESTART_FIRST, RESTART_MAX, 2.0, jitter=lambda: 0.0)
REPORT_INTERVAL = 1.0  # how often the master gathers its workers' counters
STOP_MARGIN = 5.0  # after the shutdown drain, then a worker still running is killed


class WorkerPool(service.MultiService):
    """Starts, watches, restarts, reconfigures and stops the worker processes."""

    name = "workers"

    def __init__(self, reactor: Any, state: GatewayState, count: int, affinity: Affinity) -> None:
        """``state``: the configuration in force and the listeners, as the gateway service
        keeps them (what each worker is sent)."""
        super().__init__()
        self.reactor = reactor
        self.state = state
        self.count = count
        self.affinity = affinity
        self.slots = [WorkerSlot(i) for i in range(count)]
        self.stopping = False
        self._publishers: dict[str, CrlPublisher] = {}
        self._runtime: str | None = None
        self._owns_runtime = False
        # The workers' counters, gathered every second (Twisted's TimerService).
        self._reports = timers.every(REPORT_INTERVAL, self._gather, reactor, "the workers' reports")
        self._reports.setServiceParent(self)
        self.generation = 0
        self.answers = MasterAnswers(self._parts, lambda name: self.publisher(name).flushed())

    # -- what the listeners use --

    def publisher(self, listener: str) -> CrlPublisher:
        if listener not in self._publishers:
            self._publishers[listener] = CrlPublisher(
                listener, self.runtime_dir, self.send_crl, self.reactor
            )
        return self._publishers[listener]

    def runtime_dir(self) -> str:
        """Where the CRL snapshots go (``slots.runtime_directory``), made when first asked."""
        if self._runtime is None:
            self._runtime = runtime_directory()
            self._owns_runtime = True
        return self._runtime

    def _parts(self, name: str) -> ListenerParts | None:
        listener = self.state.listeners.get(name)
        return listener.parts if listener is not None else None

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

    def stop(self, drain: float) -> defer.Deferred[None]:
        """SIGTERM to every worker (each drains for ``drain``), then SIGKILL what remains."""
        self.stopping = True
        if self._reports.running:
            self._reports.stopService()
        waits = []
        for slot in self.slots:
            if slot.timer is not None and slot.timer.active():
                slot.timer.cancel()
            if slot.process is not None and slot.ended is not None:
                waits.append(slot.ended)
                signal_process(slot.process, "TERM")
        done = defer.gatherResults(waits, consumeErrors=True)

        def kill() -> None:
            for slot in self.slots:
                if slot.process is not None:
                    log.warn("worker {index} did not stop in time: killed", index=slot.index)
                    signal_process(slot.process, "KILL")

        timer = self.reactor.callLater(drain + STOP_MARGIN, kill)
        done.addBoth(lambda _: timer.active() and timer.cancel())
        return done.addBoth(lambda _: self._remove_runtime())

    def stopService(self) -> defer.Deferred[Any] | None:
        stopped = super().stopService()
        if not self.stopping:
            return self.stop(self.state.prepared.config.globals.shutdown_drain)
        return stopped

    def _remove_runtime(self) -> None:
        if self._runtime is not None and self._owns_runtime:
            shutil.rmtree(self._runtime, ignore_errors=True)

    def _spawn(self, slot: WorkerSlot) -> None:
        if self.stopping:
            return
        slot.timer = None
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        env["MQTTGW_WORKERS"] = str(len(self.slots))  # each drains its share of drain_rate
        slot.state = WorkerState.STARTING
        slot.sent = set()
        slot.report = None
        slot.turn = defer.DeferredLock()
        slot.ended = defer.Deferred()
        try:
            slot.process = self.reactor.spawnProcess(
                WorkerProcess(slot.index, lambda reason: self.ended(slot, reason)),
                sys.executable,
                [sys.executable, "-m", "gateway.workers.child", str(slot.index)],
                env=env,
                childFDs={0: "w", 1: "r", 2: "r", 3: child_end.fileno()},
            )
        finally:
            child_end.close()
        slot.pid = slot.process.pid
        slot.started = self.reactor.seconds()
        channel = MasterChannel(
            self.answers,
            lambda ch: self._connected(slot, ch),
            lambda ch: self._lost(slot, ch),
        )
        self.reactor.adoptStreamConnection(
            parent_end.fileno(), socket.AF_UNIX, OneProtocol(channel)
        )
        parent_end.close()

    def _connected(self, slot: WorkerSlot, channel: MasterChannel) -> None:
        slot.channel = channel
        self.started(slot)

    def _lost(self, slot: WorkerSlot, channel: MasterChannel) -> None:
        if slot.channel is channel:
            slot.channel = None

    def ended(self, slot: WorkerSlot, reason: Failure) -> None:
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
        listeners = self.state.listeners.values()
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
            for staple, der in current_staples(ls.parts).items():
                yield channel.callRemote(c.Staple, listener=staple, der=clip(der))
        answer = yield channel.callRemote(
            c.Configure, path=prepared.config.path, generation=self.generation
        )
        return answer

    def _in_turn(self, slot: WorkerSlot, prepared: Prepared) -> defer.Deferred[Any]:
        """``_configure``, after whatever this worker is being sent already (a reload during
        a worker's start must not interleave its files with the start's)."""
        return slot.turn.run(self._configure, slot, prepared)

    def started(self, slot: WorkerSlot) -> None:
        d = self._in_turn(slot, self.state.prepared)

        def answered(answer: dict[str, Any]) -> None:
            if answer.get("ok"):
                slot.state = WorkerState.SERVING
                log.info("worker {index} (pid {pid}) serving", index=slot.index, pid=slot.pid)
                self._gather_one(slot)
            else:
                log.error(
                    "worker {index} could not start: {text}", index=slot.index, text=answer["text"]
                )
                signal_process(slot.process, "KILL")

        def failed(reason: Failure) -> None:
            if slot.process is not None:
                log.error(
                    "worker {index}: start failed ({error})",
                    index=slot.index,
                    error=describe_error(reason.value),
                )
                signal_process(slot.process, "KILL")

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
                    signal_process(slot.process, "TERM")

            runs.append(d.addCallback(answered).addErrback(lambda _: None))
        return defer.gatherResults(runs)

    def send_crl(self, listener: str, path: str) -> defer.Deferred[Any]:
        runs = []
        for slot in self.slots:
            if slot.channel is not None and any(k[0] == listener for k in slot.sent):
                d = slot.channel.callRemote(c.CrlSnapshot, listener=listener, path=path)
                runs.append(d.addErrback(lambda _: None))
        return defer.gatherResults(runs)

    def send_staple(self, listener: str, der: bytes, name: str | None = None) -> None:
        """To the workers serving ``listener``: its staple, or the one named ``name``
        (``<listener>/<tenant>``: a tenant's certificate's)."""
        for slot in self.slots:
            if slot.channel is not None and any(k[0] == listener for k in slot.sent):
                call = slot.channel.callRemote(c.Staple, listener=name or listener, der=clip(der))
                call.addErrback(lambda _: None)

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
