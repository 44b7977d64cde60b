"""A listener's CRLs handed to the workers: each change is written to a new snapshot file
(in a thread) that every worker maps; the master maps it too."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.errors import describe_error
from gateway.offload import off_reactor
from gateway.revocation.crl import LoadedCrl
from gateway.revocation.crl_service import CrlCache
from gateway.revocation.snapshot import encode_snapshot, map_snapshot

log = Logger()


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

    def __init__(
        self,
        listener: str,
        directory: Callable[[], str],
        send: Callable[[str, str], defer.Deferred[Any]],
        reactor: Any,
    ) -> None:
        """``directory()``: where the snapshot files go; ``send(listener, path)``: tells
        every worker of a new one (fires once they all have it)."""
        self.listener = listener
        self.directory = directory
        self.send = send
        self.reactor = reactor
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
        path = os.path.join(self.directory(), f"crl-{safe}-{self._seq}.snapshot")
        d = off_reactor(self.reactor, _write_snapshot, path, encode_snapshot(items))
        d.addCallback(lambda _: self._written(cache, items, path))
        d.addErrback(self._failed)
        d.addBoth(lambda _: self._done())

    def _written(
        self, cache: CrlCache, items: list[tuple[str, LoadedCrl]], path: str
    ) -> defer.Deferred[Any]:
        mapped = map_snapshot(path)
        cache.adopt([(old, new) for (_, old), (_, new) in zip(items, mapped, strict=True)])
        previous, self.path = self.path, path
        sent = self.send(self.listener, path)

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
            error=describe_error(reason.value),
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
