"""A reconnect storm against one gateway process, for the scripts that look inside one
(``storm_profile.py``: where its CPU goes; ``syscalls.py``: its system calls): the
devices CA with a 1,000-entry CRL, mosquitto behind, a one-process gateway checking the
CRLs with no admission limits, and 4 client processes handshaking from 16 addresses."""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator
from typing import Any

import workers
from harness import NO_LIMITS

from gateway import testing as support

CLIENTS = 4


@contextlib.contextmanager
def one_gateway(key: str) -> Iterator[tuple[workers.World, int, Any, int]]:
    """(the world, the gateway's port, its process, mosquitto's plain port); all stopped
    at the end."""
    world = workers.World(key)
    world.with_crls(1000)
    broker, plain = support.start_mosquitto(world.dir)
    port = support.free_port()
    conf = support.listener_conf("storm", port, plain, world.pki) + NO_LIMITS
    conf += "stats_log_interval = 1h\nworkers = 1\n" + world._crl_conf("storm")
    gateway = support.start_gateway(world.dir, conf, "storm")
    try:
        yield world, port, gateway, plain
    finally:
        gateway.stop()
        broker.stop()
        world.close()


def handshakes(world: workers.World, port: int, seconds: float, resume: bool) -> tuple[int, int]:
    """``CLIENTS`` processes handshaking with ``port`` for ``seconds`` (offering their last
    TLS session with ``resume``): (handshakes done, of them resumed)."""
    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    clients = [
        multiprocessing.Process(
            target=workers._handshaker,
            args=(
                [port],
                world.pki,
                world.device,
                workers.sources_of(i, CLIENTS),
                seconds,
                queue,
                resume,
            ),
        )
        for i in range(CLIENTS)
    ]
    for c in clients:
        c.start()
    results = [queue.get(timeout=seconds + 60) for _ in clients]
    for c in clients:
        c.join()
    return sum(r[0][0] for r in results), sum(r[1][0] for r in results)
