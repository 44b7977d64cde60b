"""What the master keeps of each worker process (``WorkerSlot``), and the small things it
does with them: signal one, find the staple to send, make the snapshots' directory."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import attrs
from twisted.internet import defer, error

from gateway.parts import ListenerParts
from gateway.reports import WorkerReport
from gateway.status import WorkerState
from gateway.workers.channel import MasterChannel


def current_staples(parts: ListenerParts) -> dict[str, bytes]:
    """The DER of each staple a master's listener holds now (b"": none), by the name its
    workers know it by: the listener's, and ``<listener>/<tenant>`` for each tenant's."""

    def der(stapler: Any) -> bytes:
        current = stapler.current if stapler is not None else None
        return current.der if current is not None else b""

    out = {parts.name: der(parts.stapler)}
    for tenant, stapler in parts.tenant_staplers.items():
        out[f"{parts.name}/{tenant}"] = der(stapler)
    return out


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


def runtime_directory() -> str:
    """A private directory for the CRL snapshots: in systemd's RUNTIME_DIRECTORY, else in
    /dev/shm where it exists (memory, never a disk)."""
    given = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if given and os.path.isdir(given):
        return tempfile.mkdtemp(prefix="mqttgw-", dir=given)
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix="mqttgw-", dir=shm)


def signal_process(process: Any, name: str) -> None:
    if process is None:
        return
    try:
        process.signalProcess(name)
    except (error.ProcessExitedAlready, OSError):
        pass
