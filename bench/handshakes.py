"""Full mutual-TLS handshakes + CONNECT/CONNACK per second, and per CPU-second of the server.

    python bench/handshakes.py [--seconds 10] [--workers 2] [--tls 1.3]

Client processes open connections one after another for a fixed time: a full handshake
with a client certificate (no session resumption), CONNECT, CONNACK, close. The same load
is run against the gateway and against mosquitto's own mutual-TLS listener, in the same run.
The CPU time of the process that terminates TLS is read from /proc.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

from harness import haproxy_column, report, setup

from gateway import testing as support


def worker(
    port: int,
    pki: support.Pki,
    device: tuple[str, str],
    tls: str,
    seconds: float,
    out: multiprocessing.Queue,
) -> None:  # type: ignore[type-arg]
    ctx = support.client_context(pki, device, tls)
    done = 0
    deadline = time.monotonic() + seconds
    connect = support.connect_packet("hs", keep_alive=0)
    while time.monotonic() < deadline:
        with support.tls_connect(port, ctx, timeout=10) as s:
            s.sendall(connect)
            if support.read_exact(s, 4) != b"\x20\x02\x00\x00":
                raise RuntimeError("no CONNACK")
        done += 1
    out.put(done)


def measure(port: int, pid: int, s: object, args: argparse.Namespace) -> tuple[float, float]:
    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    cpu0 = support.cpu_seconds(pid)
    start = time.monotonic()
    procs = [
        multiprocessing.Process(
            target=worker,
            args=(port, s.pki, s.device, args.tls, args.seconds, queue),  # type: ignore[attr-defined]
        )
        for _ in range(args.workers)
    ]
    for proc in procs:
        proc.start()
    total = sum(queue.get(timeout=args.seconds + 60) for _ in procs)
    for proc in procs:
        proc.join()
    elapsed = time.monotonic() - start
    cpu = support.cpu_seconds(pid) - cpu0
    return total / elapsed, total / cpu if cpu else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tls", default="1.3", choices=["1.3", "1.2"])
    args = parser.parse_args()
    with setup() as s:
        results = {}
        for name, (port, pid) in s.targets().items():
            results[name] = measure(port, pid, s, args)
            print(
                f"{name}: {results[name][0]:.0f} handshakes/s, "
                f"{results[name][1]:.0f} per CPU-second of the server"
            )
        report(
            f"Full mTLS handshakes + CONNECT/CONNACK, TLS {args.tls}, ECDSA P-256, "
            f"{args.workers} client processes, {args.seconds:.0f}s each",
            [
                (
                    "handshakes per second",
                    results["gateway"][0],
                    results["mosquitto"][0],
                    *haproxy_column(results, 0),
                ),
                (
                    "handshakes per CPU-second of the server",
                    results["gateway"][1],
                    results["mosquitto"][1],
                    *haproxy_column(results, 1),
                ),
            ],
            "handshakes",
            higher_is_better=True,
        )


if __name__ == "__main__":
    main()
