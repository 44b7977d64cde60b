"""The one way work leaves the reactor thread: ``off_reactor`` runs a function in the
reactor's thread pool (file writes, JSON and CRL index reads, configuration reads) and
returns a Deferred; under a test's Clock, which has no thread pool, it runs inline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, threads


def off_reactor(reactor: Any, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
    """``f(*args)`` in the reactor's thread pool (inline under a test's Clock)."""
    pool = getattr(reactor, "getThreadPool", None)
    if pool is None:
        return defer.maybeDeferred(f, *args)
    return threads.deferToThreadPool(reactor, pool(), f, *args)
