"""A reconnect storm after a restart: devices from 64 source addresses hold their sessions,
the process terminating TLS is restarted (stopped, started again), and every device
reconnects at once (TLS + CONNECT, retrying while the port is closed). Reported: seconds
from the restart's start until every device is admitted again, and the CPU-seconds the new
process spent on it; the gateway (one process, default configuration, its drain) against
HAProxy from Debian's packages in front of the same mosquitto, the same clients, in one run.

    python bench/restart_storm.py [--devices 5000] [--rounds 3] [--threads 64]
"""

from __future__ import annotations

import argparse
import signal
import socket
import ssl
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from harness import NO_LIMITS, raise_fd_limit, start_haproxy

from gateway import testing as support

SOURCES = [f"127.0.{1 + i // 250}.{2 + i % 250}" for i in range(64)]


def connect(port: int, ctx: ssl.SSLContext, source: str, client_id: str, deadline: float) -> Any:
    """One device's session: retried while refused (the port is closed during a restart)."""
    while True:
        try:
            raw = socket.create_connection(("127.0.0.1", port), 30, source_address=(source, 0))
            s = ctx.wrap_socket(raw, server_hostname="localhost")
            s.sendall(support.connect_packet(client_id, keep_alive=0))
            if support.read_exact(s, 4) == b"\x20\x02\x00\x00":
                return s
            s.close()
        except (OSError, ssl.SSLError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(client_id)
        time.sleep(0.05)


def storm(
    port: int, ctx: ssl.SSLContext, devices: int, threads: int, restart: Callable[[], int]
) -> tuple[float, float]:
    """Hold ``devices`` sessions, restart (``restart()`` gives the new pid), reconnect all."""
    held: list[Any] = []
    lock = threading.Lock()

    def run(part: range, out: list[Any], deadline: float) -> None:
        for i in part:
            s = connect(port, ctx, SOURCES[i % len(SOURCES)], f"storm-{i}", deadline)
            with lock:
                out.append(s)

    def all_of(out: list[Any]) -> None:
        deadline = time.monotonic() + 300
        parts = [range(t, devices, threads) for t in range(threads)]
        workers = [threading.Thread(target=run, args=(part, out, deadline)) for part in parts]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    all_of(held)
    start = time.monotonic()
    pid = restart()
    started = time.monotonic()
    cpu0 = support.cpu_seconds(pid)
    for s in held:
        s.close()
    again: list[Any] = []
    all_of(again)
    end = time.monotonic()
    cpu = support.cpu_seconds(pid) - cpu0
    assert len(again) == devices
    for s in again:
        s.close()
    return end - start, end - started, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=64)
    args = parser.parse_args()
    raise_fd_limit()
    directory = tempfile.mkdtemp(prefix="mqttgw-bench-storm-")
    p = support.make_pki(directory)
    broker, plain = support.start_mosquitto(directory)
    ctx = support.client_context(p, p.client("storm"))
    port = support.free_port()
    conf = support.listener_conf("s", port, plain, p) + NO_LIMITS + "log_connect = false\n"
    state: dict[str, Any] = {"gw": support.start_gateway(directory, conf, "gw")}
    haproxy, hport = start_haproxy(directory, p, plain)
    state["haproxy"] = haproxy

    def restart_gateway() -> int:
        state["gw"].proc.send_signal(signal.SIGTERM)
        state["gw"].proc.wait(60)
        state["gw"] = support.start_gateway(directory, conf, "gw")
        return int(state["gw"].pid)

    def restart_haproxy() -> int:
        state["haproxy"].terminate()
        state["haproxy"].wait(30)
        state["haproxy"], _ = start_haproxy(directory, p, plain, port=hport)
        return int(state["haproxy"].pid)

    targets = {"gateway": (port, restart_gateway)}
    if haproxy is not None:
        targets["haproxy"] = (hport, restart_haproxy)
    results: dict[str, list[tuple[float, float, float]]] = {n: [] for n in targets}
    try:
        for r in range(args.rounds):
            for name in list(targets)[r % 2 :] + list(targets)[: r % 2]:
                where, restart = targets[name]
                elapsed, after, cpu = storm(where, ctx, args.devices, args.threads, restart)
                results[name].append((elapsed, after, cpu))
                print(
                    f"  round {r + 1} {name}: all admitted {elapsed:.2f}s after the restart "
                    f"began, {after:.2f}s after the new process accepted; {cpu:.2f} CPU-s",
                    flush=True,
                )
    finally:
        state["gw"].stop()
        if state["haproxy"] is not None:
            state["haproxy"].terminate()
        broker.stop()
    print(
        f"\nRestart storm: {args.devices} devices from {len(SOURCES)} addresses reconnect "
        f"at once ({args.threads} client threads); medians of {args.rounds} rounds"
    )
    print("  (the gateway's restart includes its drain: shutdown_drain spreads the closes)")
    for name, values in results.items():
        elapsed, after, cpu = (statistics.median(v[i] for v in values) for i in range(3))
        print(
            f"  {name:8} from the restart {elapsed:6.2f}s  from accepting {after:6.2f}s  "
            f"{cpu:6.2f} CPU-s ({args.devices / cpu:5.0f} admissions per CPU-s)"
        )


if __name__ == "__main__":
    main()
