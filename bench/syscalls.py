"""System calls per connection in a reconnect storm, the gateway beside HAProxy: a
one-process gateway and HAProxy (Debian's package) terminating the same mutual TLS with
the same CRLs in front of the same mosquitto, each in turn traced by ``strace -c -f``
(Debian package strace: not a test dependency) while 4 client processes handshake from 16
addresses (resumed by default, ``--full`` for full handshakes). Prints each system call's
count per connection, for both, side by side: what a connection costs the kernel, and
where the gateway makes calls HAProxy does not (or the other way round).

    python bench/syscalls.py [--full] [--seconds 6] [--key rsa]

Tracing slows both servers down: read the counts, not the rates.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import tempfile
import time

import storm
import workers
from harness import start_haproxy, stop_haproxy


def counts(path: str) -> collections.Counter[str]:
    """strace -c's table: calls by system call name."""
    calls: collections.Counter[str] = collections.Counter()
    with open(path) as f:
        for line in f:
            parts = line.split()
            # % time, seconds, usecs/call, calls, [errors,] syscall
            if len(parts) >= 5 and parts[-1].isidentifier() and parts[3].isdigit():
                if parts[-1] != "total":
                    calls[parts[-1]] += int(parts[3])
    return calls


def traced_storm(
    strace: str, pid: int, port: int, world: workers.World, seconds: float, resume: bool
) -> tuple[int, collections.Counter[str]]:
    """(connections made, system calls of ``pid`` and its threads) over one storm."""
    out = os.path.join(tempfile.mkdtemp(prefix="mqttgw-syscalls-"), "strace.txt")
    tracer = subprocess.Popen(
        [strace, "-c", "-f", "-o", out, "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1)  # (attached)
        done, _ = storm.handshakes(world, port, seconds, resume)
        time.sleep(0.5)  # (the last closes)
    finally:
        tracer.send_signal(2)  # strace writes its table on SIGINT
        tracer.wait(30)
    return done, counts(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--full", action="store_true", help="full handshakes (else resumed)")
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--key", choices=("ec", "rsa"), default="rsa")
    args = parser.parse_args()
    strace = shutil.which("strace")
    if strace is None:
        raise SystemExit("strace is not installed (Debian package strace)")
    resume = not args.full
    rows: dict[str, tuple[int, collections.Counter[str]]] = {}
    with storm.one_gateway(args.key) as (world, port, gateway, plain):
        haproxy, hport = start_haproxy(world.dir, world.pki, plain, world.crl_file)
        try:
            time.sleep(1)
            rows["gateway"] = traced_storm(strace, gateway.pid, port, world, args.seconds, resume)
            if haproxy is not None:
                rows["haproxy"] = traced_storm(
                    strace, haproxy.pid, hport, world, args.seconds, resume
                )
        finally:
            stop_haproxy(haproxy)
    kind = "full" if args.full else "resumed"
    names = sorted(
        {n for _, c in rows.values() for n in c},
        key=lambda n: -max(c[n] / max(done, 1) for done, c in rows.values()),
    )
    print(f"system calls per {kind} connection (TLS 1.3, {args.key}, CRLs checked)")
    print(f"  {'':16s}" + "".join(f"{name:>12s}" for name in rows))
    print(f"  {'connections':16s}" + "".join(f"{done:12d}" for done, _ in rows.values()))
    for n in names:
        per = [c[n] / max(done, 1) for done, c in rows.values()]
        if max(per) >= 0.01:
            print(f"  {n:16s}" + "".join(f"{x:12.2f}" for x in per))
    totals = [sum(c.values()) / max(done, 1) for done, c in rows.values()]
    print(f"  {'total':16s}" + "".join(f"{x:12.2f}" for x in totals))


if __name__ == "__main__":
    main()
