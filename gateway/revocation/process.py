"""Run the CRL worker in a child process and turn its answer into ``LoadedCrl`` values."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import attrs
from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IPullProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.revocation.crl import CrlError, CrlInfo, LoadedCrl, decode_answer

# A worker that has not answered by then is killed: verifying a 37 MB CRL takes about half
# a second, so minutes mean a stuck or hostile input.
WORKER_TIMEOUT = 300.0
_STDERR_KEPT = 8192  # bytes of a failing worker's stderr kept for the log line


def encode_request(
    trust_pem: bytes,
    now: float,
    skew: float,
    persist: str | None,
    url: str,
    current: list[CrlInfo],
    body_path: str | None = None,
) -> bytes:
    header = {
        "body_path": body_path,
        "trust_pem": trust_pem.decode("ascii"),
        "now": now,
        "skew": skew,
        "persist": persist,
        "url": url,
        "current": [info.to_json() for info in current],
    }
    return json.dumps(header).encode() + b"\n"


@implementer(IPullProducer)
class _Feeder:
    """Writes the request to the worker's stdin one chunk at a time, as the pipe drains:
    a large CRL is never joined or buffered whole on the reactor thread."""

    def __init__(self, transport: Any, chunks: list[bytes]) -> None:
        self.transport = transport
        self.chunks = chunks
        self.index = 0

    def resumeProducing(self) -> None:
        if self.index < len(self.chunks):
            chunk, self.chunks[self.index] = self.chunks[self.index], b""
            self.index += 1
            self.transport.write(chunk)
        else:
            self.transport.unregisterProducer()
            self.transport.closeStdin()

    def stopProducing(self) -> None:
        self.chunks = []


class _WorkerProtocol(protocol.ProcessProtocol):
    transport: Any  # the process transport, also the consumer of what is fed to it

    def __init__(
        self, chunks: list[bytes], done: defer.Deferred[bytearray], max_output: int
    ) -> None:
        self.chunks = chunks
        self.done = done
        self.max_output = max_output
        self.output = bytearray()
        self.too_large = False
        self.errors: list[bytes] = []

    def connectionMade(self) -> None:
        feeder = _Feeder(self.transport, self.chunks)
        self.chunks = []
        self.transport.registerProducer(feeder, False)
        feeder.resumeProducing()

    def outReceived(self, data: bytes) -> None:
        if len(self.output) + len(data) > self.max_output:
            if not self.too_large:
                self.too_large = True
                self.transport.signalProcess("KILL")
            return
        self.output += data

    def errReceived(self, data: bytes) -> None:
        if sum(map(len, self.errors)) < _STDERR_KEPT:
            self.errors.append(data)

    def processEnded(self, reason: Failure) -> None:
        if self.done.called:
            return
        if self.too_large:
            self.done.errback(CrlError("worker_error", "CRL worker answer too large"))
        elif reason.check(error.ProcessDone):
            self.done.callback(self.output)
        else:
            stderr = b"".join(self.errors).decode("utf-8", "replace").strip()[-300:]
            self.done.errback(
                CrlError("worker_error", f"CRL worker failed ({reason.value}) {stderr}")
            )


def _worker_slots() -> defer.DeferredSemaphore:
    return defer.DeferredSemaphore(max(2, os.cpu_count() or 2))


@attrs.define
class SubprocessProcessor:
    """Processes each CRL body in ``python -m gateway.revocation.worker``: as many at once
    as there are CPUs, the others queued (a start with a hundred CRL sources, a listener's
    and its tenants', spawns no hundred interpreters at once: their memory, and the
    reactor's time spawning them, would be paid all together)."""

    _reactor: Any
    timeout: float = WORKER_TIMEOUT
    _slots: defer.DeferredSemaphore = attrs.field(factory=_worker_slots)

    def process(
        self, header: bytes, body: list[bytes], max_output: int
    ) -> defer.Deferred[list[LoadedCrl]]:
        return self._slots.run(self._process, header, body, max_output)

    def _process(
        self, header: bytes, body: list[bytes], max_output: int
    ) -> defer.Deferred[list[LoadedCrl]]:
        done: defer.Deferred[bytearray] = defer.Deferred()
        proto = _WorkerProtocol([header, *body], done, max_output)
        transport = self._reactor.spawnProcess(
            proto,
            sys.executable,
            [sys.executable, "-m", "gateway.revocation.worker"],
            env=dict(os.environ),
        )

        def kill() -> None:
            if not done.called:
                transport.signalProcess("KILL")
                done.errback(CrlError("worker_error", f"CRL worker took over {self.timeout:g}s"))

        timer = self._reactor.callLater(self.timeout, kill)
        done.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        return done.addCallback(decode_answer)
