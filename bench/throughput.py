"""QoS 0 messages of 64 bytes relayed per second, one PUBLISH per TLS record.

    python bench/throughput.py [--messages 200000]

mosquitto_pub -l (C, libmosquitto) publishes one PUBLISH per line of its input, each written
with its own SSL_write, so one PUBLISH per TLS record. A subscriber counts the bytes of the
PUBLISH packets it receives (all the same size). Publisher and subscriber both go through the
gateway, then both straight to mosquitto's mutual-TLS listener, in the same run. Reported:
messages delivered per second, and per CPU-second of the process terminating TLS.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time

from harness import haproxy_column, report, setup

from gateway import testing as support

TOPIC = "b"
PAYLOAD = 64
PACKET = 2 + 2 + len(TOPIC) + PAYLOAD  # fixed header (1-byte length) + topic + payload


def measure(port: int, pid: int, s: object, messages: int, lines_file: str) -> tuple[float, float]:
    p = s.pki  # type: ignore[attr-defined]
    cert, key = s.device  # type: ignore[attr-defined]
    sub = support.tls_connect(port, support.client_context(p, (cert, key)), timeout=60)
    sub.sendall(support.connect_packet(f"tp-sub-{port}", keep_alive=0))
    assert support.read_exact(sub, 4) == b"\x20\x02\x00\x00"
    sub.sendall(b"\x82\x06\x00\x01\x00\x01b\x00")
    assert support.read_exact(sub, 5) == b"\x90\x03\x00\x01\x00"
    cpu0 = support.cpu_seconds(pid)
    start = time.monotonic()
    with open(lines_file, "rb") as stdin:
        pub = subprocess.Popen(
            [
                "mosquitto_pub",
                "-h",
                "localhost",
                "-p",
                str(port),
                "--cafile",
                p.ca_file,
                "--cert",
                cert,
                "--key",
                key,
                "-t",
                TOPIC,
                "-l",
                "-q",
                "0",
                "-i",
                f"tp-pub-{port}",
            ],
            stdin=stdin,
        )
        expected = messages * PACKET
        got = 0
        while got < expected:
            data = sub.recv(1 << 20)
            if not data:
                raise RuntimeError(f"subscriber closed after {got // PACKET} messages")
            got += len(data)
        elapsed = time.monotonic() - start
        cpu = support.cpu_seconds(pid) - cpu0
        pub.wait(30)
    sub.close()
    return messages / elapsed, messages / cpu if cpu else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=200_000)
    args = parser.parse_args()
    with setup() as s:
        lines_file = os.path.join(s.dir, "lines.txt")
        with open(lines_file, "wb") as f:
            for i in range(args.messages):
                f.write(f"{i:0{PAYLOAD}d}".encode() + b"\n")
        results = {}
        for name, (port, pid) in s.targets().items():
            results[name] = measure(port, pid, s, args.messages, lines_file)
            print(f"{name}: {results[name][0]:.0f} msg/s, {results[name][1]:.0f} per CPU-second")
        report(
            f"QoS 0, 64-byte payloads, one PUBLISH per TLS record, {args.messages} messages "
            "(publisher and subscriber both through the server)",
            [
                (
                    "messages per second",
                    results["gateway"][0],
                    results["mosquitto"][0],
                    *haproxy_column(results, 0),
                ),
                (
                    "messages per CPU-second of the server",
                    results["gateway"][1],
                    results["mosquitto"][1],
                    *haproxy_column(results, 1),
                ),
            ],
            "messages",
            higher_is_better=True,
        )


if __name__ == "__main__":
    main()
