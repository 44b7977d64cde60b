"""A worker process: ``python -m gateway.workers.child INDEX``, started by the master.

It binds nothing and needs no privileges: it reads the files the configuration names from
the master's record (sent over the channel, file descriptor 3), adopts the listening
sockets the master hands it, and serves connections exactly as a single process does. It
fetches nothing either: each listener's CRLs arrive as a snapshot file it memory-maps, and
the staple as bytes. Its log events go to the master as JSON on standard error.

SIGTERM (from the master) stops it gracefully (the shutdown drain); SIGINT and SIGHUP are
the master's to act on. If the channel to the master closes, it stops the same way.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet import defer, protocol
from twisted.logger import ILogObserver, Logger, eventAsText, globalLogBeginner
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway import timers
from gateway.config.model import GlobalSettings, ListenerSettings
from gateway.errors import GatewayError, describe_error
from gateway.files import FileRecord
from gateway.listener import ListenerService
from gateway.parts import ListenerHandle
from gateway.ports import PortService
from gateway.prepare import prepare
from gateway.process import ProcessRole
from gateway.reports import ListenerReport, WorkerReport
from gateway.revocation.crl_service import CrlCache
from gateway.revocation.ocsp_answers import OcspQuestion
from gateway.revocation.ocsp_client import OcspClient
from gateway.roles import IListenerRole, Serving, port_service
from gateway.service import GatewayService
from gateway.tls.material import TlsMaterial
from gateway.workers import commands as c
from gateway.workers.inbox import (
    AdoptedEndpoint,
    SharedCrl,
    SharedStaple,
    WorkerInbox,
)

log = Logger()

CHANNEL_FD = 3


@implementer(IListenerRole)
class WorkerRole(Serving):
    """The listeners of a worker: the master's socket, CRL snapshot and staple; connections
    served exactly as in one process."""

    checks_brokers = True
    fetches = False  # the master fetches (and reports the sources)

    def __init__(self, inbox: WorkerInbox, cooperate: Callable[[Iterator[Any]], Any]) -> None:
        self.inbox = inbox
        self.cooperate = cooperate

    def revocation_source(
        self,
        settings: ListenerSettings,
        material: TlsMaterial,
        globals_: GlobalSettings,
        cache: CrlCache | None,
        on_update: Callable[..., None],
    ) -> SharedCrl:
        assert settings.crl is not None
        data = self.inbox.crl(settings.name)
        data.cache.grace = settings.crl.grace_period
        return SharedCrl(settings.name, data, self.inbox.call, on_update)

    def stapler(
        self,
        settings: ListenerSettings,
        material: TlsMaterial,
        globals_: GlobalSettings,
        on_change: Callable[[bytes], None],
    ) -> SharedStaple:
        return SharedStaple(settings.name, self.inbox.staple(settings.name))

    def ocsp_client(
        self,
        settings: ListenerSettings,
        material: TlsMaterial,
        globals_: GlobalSettings,
        on_revoked: Callable[..., None],
    ) -> OcspClient:
        """Answers come from the master (one request per certificate for every worker),
        validated here again; live sessions' answers are refreshed through it."""
        assert settings.client_ocsp is not None
        name = settings.name
        inbox = self.inbox

        def remote(q: OcspQuestion, fresher_than: float) -> defer.Deferred[bytes]:
            d = inbox.call(
                c.OcspQuery,
                listener=name,
                key_hash=q.key[0],
                issuer=q.issuer.public_bytes(Encoding.DER),
                serial=str(q.serial),
                responder=q.responder or "",
                subject=q.subject,
                fresher_than=fresher_than,
            )

            def der_of(answer: dict[str, Any]) -> bytes:
                if not answer["der"]:
                    raise GatewayError("ocsp_unavailable", answer["error"] or "no answer")
                return bytes(answer["der"])

            return d.addCallback(der_of)

        return OcspClient(
            name,
            settings.client_ocsp,
            inbox.reactor,
            None,
            material.revocation_issuers,
            None,  # the master keeps the answers on disk
            self.cooperate,
            remote=remote,
            on_revoked=on_revoked,
        )

    def port(self, listener: ListenerHandle, settings: ListenerSettings) -> PortService:
        tls = listener.creator if settings.transport.tls else None
        endpoint = AdoptedEndpoint(self.inbox, settings.name, settings.bind, tls)
        return port_service(listener, settings, endpoint)


def listener_report(inbox: WorkerInbox, listener: ListenerService) -> ListenerReport:
    """This worker's counters for one listener (the master adds them up)."""
    parts = listener.parts
    staple = inbox.staples.get(parts.name)
    own = listener.status()
    counts = dict(parts.revocation.counts) if parts.revocation is not None else {}
    if parts.ocsp_client is not None:  # its lookups happen here; the master merges them
        counts["ocsp_cache_hits"] = parts.ocsp_client.answers.hits
        counts["ocsp_cache_misses"] = parts.ocsp_client.answers.misses
    return ListenerReport(
        own.stats,
        counts,
        staple.sent if staple is not None else 0,
        own.accepting,
        own.brokers,
        dict(own.auth.counts) if own.auth is not None else {},
    )


def worker_report(inbox: WorkerInbox, gateway: GatewayService) -> WorkerReport:
    return WorkerReport(
        os.getpid(),
        gateway.monitor.max_lag_ever,
        {name: listener_report(inbox, ls) for name, ls in gateway.listeners.items()},
    )


class WorkerChannel(amp.AMP):
    """The worker's end of the channel to the master."""

    def __init__(self, inbox: WorkerInbox) -> None:
        super().__init__()
        self.worker = inbox
        self._report: list[bytes] = []

    def connectionMade(self) -> None:
        super().connectionMade()
        self.worker.channel = self

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        super().connectionLost(reason)
        self.worker.channel = None
        reactor = self.worker.reactor
        if reactor.running:
            log.info("worker {index}: the master is gone; stopping", index=self.worker.index)
            reactor.stop()

    @c.FilePart.responder
    def file_part(self, path: str, mode: int, data: bytes, last: bool) -> dict[str, Any]:
        self.worker.file_part(path, mode, data, last)
        return {}

    @c.Listen.responder
    def listen(self, listener: str, host: str, port: int, fd: int) -> dict[str, Any]:
        self.worker.socket(listener, host, port, fd)
        return {}

    @c.CrlSnapshot.responder
    def crl_snapshot(self, listener: str, path: str) -> dict[str, Any]:
        try:
            self.worker.crl(listener).load(path)
        except FileNotFoundError:
            pass  # replaced already: the newer one is on its way
        except Exception as e:
            log.error(
                "worker {index}: CRL snapshot {path} not usable ({error}); keeping the "
                "previous one",
                index=self.worker.index,
                path=path,
                error=describe_error(e),
            )
        return {}

    @c.Staple.responder
    def staple(self, listener: str, der: bytes) -> dict[str, Any]:
        self.worker.staple(listener).der = der
        return {}

    @c.Configure.responder
    def configure(self, path: str, generation: int) -> defer.Deferred[dict[str, Any]]:
        record = FileRecord.replaying(self.worker.files)
        try:
            prepared = prepare(path, record)
        except GatewayError as e:
            return defer.succeed({"ok": False, "text": str(e)})
        gateway = self.worker.gateway
        if gateway is None:
            cooperator = timers.paced_cooperator(self.worker.reactor)
            role = ProcessRole(
                WorkerRole(self.worker, cooperator.cooperate),
                admin=False,
                signals=False,
                logs_reloads=False,
                stats_line=False,
                cooperator=cooperator,
            )
            gateway = GatewayService(prepared, self.worker.reactor, role)
            self.worker.gateway = gateway
            gateway.privilegedStartService()
            gateway.startService()
            reactor = self.worker.reactor
            reactor.addSystemEventTrigger("before", "shutdown", gateway.stopService)
            return defer.succeed({"ok": True, "text": "started"})
        d = gateway.apply(prepared)

        def refused(reason: Failure) -> dict[str, Any]:
            return {"ok": False, "text": describe_error(reason.value)}

        d.addCallback(lambda r: {"ok": True, "text": "; ".join(r.get("changes", []))})
        return d.addErrback(refused)

    @c.Report.responder
    def report(self, page: int) -> dict[str, Any]:
        if page == 0:
            gateway = self.worker.gateway
            body = (
                worker_report(self.worker, gateway).to_json()
                if gateway is not None
                else {"pid": os.getpid()}
            )
            self._report = c.pieces(json.dumps(body).encode())
        data = self._report[page] if page < len(self._report) else b""
        return {"data": data, "more": page + 1 < len(self._report)}


LOG_BATCH = 0.02  # seconds a log record may wait to travel with others (fewer wake-ups)


def _event_text(event: dict[str, Any]) -> str:
    """The event's text as Twisted's ``eventAsText`` gives it. Most events (every connection
    logs two) take the short way: ``str.format_map``, the same formatting language as
    Twisted's formatter, in C (a third of the cost of a worker's log line). Events with a
    traceback, a call in a field ("{f()}", which only Twisted's formatter knows) or any
    formatting problem go Twisted's way, so they read exactly as in one process."""
    fmt = event.get("log_format")
    if isinstance(fmt, str) and "log_failure" not in event:
        try:
            return fmt.format_map(event)
        except Exception:
            pass
    return eventAsText(event, includeTimestamp=False, includeSystem=False)


@implementer(ILogObserver)
class LogToMaster:
    """A log observer writing each event as one record the master re-emits: RS, then the
    JSON list [time, level, namespace, text], then a newline. The text is formatted here,
    as a single process's log would show it (tracebacks included); the master only adds
    ``worker N:`` (parsing a short list, not a whole flattened event). Records of the same
    20 ms go in one write: under a connection storm the master wakes once per batch, not
    twice per connection. What is pending is written at shutdown."""

    def __init__(self, stream: Any, reactor: Any) -> None:
        self.stream = stream
        self.reactor = reactor
        self.pending: list[str] = []
        self.scheduled = False
        self.main = threading.get_ident()

    def __call__(self, event: dict[str, Any]) -> None:
        text = _event_text(event)
        level = event.get("log_level")
        record = [
            event.get("log_time") or 0.0,
            level.name if level is not None else "info",
            event.get("log_namespace") or "-",
            text,
        ]
        self.pending.append("\x1e" + json.dumps(record) + "\n")
        if not self.scheduled:
            self.scheduled = True
            if threading.get_ident() == self.main and self.reactor.running:
                self.reactor.callLater(LOG_BATCH, self.flush)
            elif self.reactor.running:
                self.reactor.callFromThread(self.reactor.callLater, LOG_BATCH, self.flush)
            else:
                self.flush()

    def flush(self) -> None:
        self.scheduled = False
        pending, self.pending = self.pending, []
        if pending:
            self.stream.write("".join(pending))


def main(argv: list[str]) -> int:
    index = int(argv[1]) if len(argv) > 1 else 0
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor

    stream = open(sys.stderr.fileno(), "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115
    to_master = LogToMaster(stream, reactor)
    globalLogBeginner.beginLoggingTo([to_master], redirectStandardIO=False)
    reactor.addSystemEventTrigger("after", "shutdown", to_master.flush)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))
    inbox = WorkerInbox(reactor, index)
    factory = protocol.Factory.forProtocol(lambda: WorkerChannel(inbox))

    def adopt() -> None:
        reactor.adoptStreamConnection(CHANNEL_FD, socket.AF_UNIX, factory)
        os.close(CHANNEL_FD)

    reactor.callWhenRunning(adopt)
    reactor.run(installSignalHandlers=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
