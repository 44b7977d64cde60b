"""Run the CRL worker in a child process and turn its answer into ``LoadedCrl`` values."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import attrs
from twisted.internet import defer, error, protocol
from twisted.python.failure import Failure

from gateway.revocation import worker
from gateway.revocation.crl import CrlError, CrlInfo, LoadedCrl, SerialIndex


def decode_answer(data: bytes) -> list[LoadedCrl]:
    """Parse the worker's stdout: a JSON line, then the index blobs. Raises CrlError."""
    header, sep, rest = data.partition(b"\n")
    if not sep:
        raise CrlError("worker_error", "no answer from the CRL worker")
    answer = json.loads(header)
    if not answer.get("ok"):
        raise CrlError(str(answer.get("kind")), str(answer.get("detail")))
    out = []
    view = memoryview(rest)
    pos = 0
    for item in answer["crls"]:
        size = int(item["blob_len"])
        blob = bytes(view[pos : pos + size])
        pos += size
        out.append(LoadedCrl(CrlInfo.from_json(item), SerialIndex(int(item["width"]), blob)))
    if pos != len(rest):
        raise CrlError("worker_error", "CRL worker answer has trailing bytes")
    return out


def encode_request(
    body: bytes,
    trust_pem: bytes,
    now: float,
    skew: float,
    persist: str | None,
    url: str,
    current: dict[bytes, CrlInfo | None],
    body_path: str | None = None,
) -> bytes:
    header = {
        "body_path": body_path,
        "trust_pem": trust_pem.decode("ascii"),
        "now": now,
        "skew": skew,
        "persist": persist,
        "url": url,
        "current": {k.hex(): (v.to_json() if v else None) for k, v in current.items()},
    }
    return json.dumps(header).encode() + b"\n" + body


class _WorkerProtocol(protocol.ProcessProtocol):
    def __init__(self, request: bytes, done: defer.Deferred[bytes], max_output: int) -> None:
        self.request = request
        self.done = done
        self.max_output = max_output
        self.chunks: list[bytes] = []
        self.size = 0
        self.errors: list[bytes] = []

    def connectionMade(self) -> None:
        self.transport.write(self.request)  # type: ignore[union-attr]
        self.transport.closeStdin()  # type: ignore[union-attr]
        self.request = b""

    def outReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_output:
            self.transport.signalProcess("KILL")  # type: ignore[union-attr]
            return
        self.chunks.append(data)

    def errReceived(self, data: bytes) -> None:
        if sum(map(len, self.errors)) < 8192:
            self.errors.append(data)

    def processEnded(self, reason: Failure) -> None:
        if self.done.called:
            return
        if self.size > self.max_output:
            self.done.errback(CrlError("worker_error", "CRL worker answer too large"))
        elif reason.check(error.ProcessDone):
            self.done.callback(b"".join(self.chunks))
        else:
            stderr = b"".join(self.errors).decode("utf-8", "replace").strip()[-300:]
            self.done.errback(
                CrlError("worker_error", f"CRL worker failed ({reason.value}) {stderr}")
            )


@attrs.define
class SubprocessProcessor:
    """Processes each CRL body in ``python -m gateway.revocation.worker``."""

    _reactor: Any
    timeout: float = 300.0

    def process(self, request: bytes, max_output: int) -> defer.Deferred[list[LoadedCrl]]:
        done: defer.Deferred[bytes] = defer.Deferred()
        proto = _WorkerProtocol(request, done, max_output)
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


@attrs.define
class InlineProcessor:
    """The same work in this process: for deterministic unit tests only."""

    def process(self, request: bytes, max_output: int) -> defer.Deferred[list[LoadedCrl]]:
        import io

        out = io.BytesIO()
        worker.main(io.BytesIO(request), out)
        try:
            return defer.succeed(decode_answer(out.getvalue()))
        except CrlError as e:
            return defer.fail(e)
