"""Where a gateway's CPU goes in a reconnect storm: a one-process gateway with CRL
checking, 4 client processes handshaking from 16 addresses (resumed by default, ``--full``
for full handshakes), sampled by py-spy (``pip install py-spy``: not a
test dependency) with native frames. Prints handshakes per CPU-second and the share of the
main thread's samples in each part of a connection's life (OpenSSL's handshake, the session
line, the resumed chain check, accept, the broker connect, the close, ...).

    python bench/storm_profile.py [--full] [--seconds 12]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time

import storm
import workers

# (what the report calls it, a frame every sample of it holds)
PARTS = [
    ("waiting (epoll_wait)", "epoll_wait"),
    ("OpenSSL handshake (do_handshake)", "Connection.do_handshake"),
    ("session line (SessionLog._emit)", "SessionLog._emit"),
    ("resumed chain check (check_resumed)", "check_resumed"),
    ("peer certificate (describe_peer_certificate)", "describe_peer_certificate"),
    ("accept (Port.doRead)", "Port.doRead"),
    ("new SSL connection (serverConnectionForTLS)", "serverConnectionForTLS"),
    ("broker connect (_on_open_upstream)", "_on_open_upstream"),
    ("broker connected (upstream_connected)", "upstream_connected"),
    ("CONNACK to the device (from_broker)", "from_broker"),
    ("timers (runUntilCurrent)", "runUntilCurrent"),
    ("close (connectionLost)", "connectionLost"),
    ("send()", ";send (libc"),
    ("connect()", ";connect (libc"),
    ("shutdown()", ";shutdown (libc"),
    ("epoll_ctl()", "epoll_ctl"),
]


def report(raw: str) -> None:
    total = 0
    seen: collections.Counter[str] = collections.Counter()
    with open(raw) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if "Condition.wait" in stack:  # (the thread pool's idle threads)
                continue
            n = int(count)
            total += n
            for name, frame in PARTS:
                if frame in stack:
                    seen[name] += n
    print(f"{total} samples of the reactor thread; share of them in:")
    for name, _ in PARTS:
        print(f"  {100.0 * seen[name] / max(total, 1):5.1f} %  {name}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--full", action="store_true", help="full handshakes (else resumed)")
    parser.add_argument("--seconds", type=float, default=12)
    parser.add_argument("--key", choices=("ec", "rsa"), default="rsa")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(spy):
        raise SystemExit("py-spy is not installed: pip install py-spy")
    raw = os.path.join(tempfile.mkdtemp(prefix="mqttgw-profile-"), "samples.txt")
    with storm.one_gateway(args.key) as (world, port, gateway, _):
        time.sleep(1)
        sampler = subprocess.Popen(
            [spy, "record", "-p", str(gateway.pid), "-r", "250", "--native", "-f", "raw"]
            + ["-o", raw, "-d", str(int(args.seconds))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        cpu0 = workers.tree_cpu(gateway.pid)
        done, resumed = storm.handshakes(world, port, args.seconds, not args.full)
        cpu = workers.tree_cpu(gateway.pid) - cpu0
        sampler.wait(args.seconds + 30)
    print(
        f"{done} handshakes ({resumed} resumed) in {cpu:.2f} CPU-s: "
        f"{done / cpu:.0f} per CPU-second under the sampler"
    )
    report(raw)


if __name__ == "__main__":
    main()
