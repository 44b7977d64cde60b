"""What the admin listener costs the hot path: two gateways in the same run, one without an
admin listener, one with it scraped every second (GET /metrics and GET /status, as a
Prometheus and a dashboard would), compared on full mTLS handshakes per CPU-second and on
relayed QoS 0 messages per CPU-second, in interleaved rounds. The CPU of the gateway
process includes the scrapes themselves (the metrics are formatted in its thread pool).

    python bench/admin_cost.py [--seconds 6] [--messages 100000] [--rounds 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import urllib.request

from handshakes import measure as measure_handshakes
from harness import NO_LIMITS, raise_fd_limit, report
from throughput import PAYLOAD
from throughput import measure as measure_throughput

from gateway import testing as support


class _Setup:
    def __init__(self, pki: support.Pki, device: tuple[str, str]) -> None:
        self.pki, self.device = pki, device


def scraper(port: int, stop: threading.Event, counts: list[int]) -> None:
    while not stop.wait(1.0):
        for path in ("/metrics", "/status"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                r.read()
        counts[0] += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tls", default="1.3")
    args = parser.parse_args()
    raise_fd_limit()
    directory = tempfile.mkdtemp(prefix="mqttgw-bench-")
    p = support.make_pki(directory)
    broker, broker_port = support.start_mosquitto(directory, extra="max_connections -1\n")
    ports = {"off": support.free_port(), "on": support.free_port()}
    admin = support.free_port()
    gateways = {}
    for name in ("off", "on"):
        conf = support.listener_conf(name, ports[name], broker_port, p) + NO_LIMITS
        if name == "on":
            conf += f"admin.listen = {admin}\n"
        gateways[name] = support.start_gateway(directory, conf, f"gw-{name}")
    lines = os.path.join(directory, "lines.txt")
    with open(lines, "w") as f:
        f.write(("x" * PAYLOAD + "\n") * args.messages)
    s = _Setup(p, p.client("bench-device"))
    stop, scrapes = threading.Event(), [0]
    thread = threading.Thread(target=scraper, args=(admin, stop, scrapes), daemon=True)
    thread.start()
    hs: dict[str, list[float]] = {"off": [], "on": []}
    tp: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for round_ in range(args.rounds):
            order = ("off", "on") if round_ % 2 == 0 else ("on", "off")
            for name in order:
                pid = gateways[name].pid
                hs[name].append(measure_handshakes(ports[name], pid, s, args)[1])
                tp[name].append(measure_throughput(ports[name], pid, s, args.messages, lines)[1])
                print(
                    f"round {round_ + 1} admin {name}: {hs[name][-1]:.0f} handshakes/CPU-s, "
                    f"{tp[name][-1]:.0f} messages/CPU-s"
                )
    finally:
        stop.set()
        thread.join(5)
        for gw in gateways.values():
            gw.stop()
        broker.stop()
    report(
        f"Admin listener on and scraped every second ({scrapes[0]} scrapes of /metrics and "
        f"/status) vs no admin listener, {args.rounds} interleaved rounds",
        [
            (
                "handshakes per CPU-second (median)",
                statistics.median(hs["on"]),
                statistics.median(hs["off"]),
            ),
            (
                "messages per CPU-second (median)",
                statistics.median(tp["on"]),
                statistics.median(tp["off"]),
            ),
        ],
        "per CPU-second",
        higher_is_better=True,
        columns=("admin on", "admin off"),
        note="admin off",
    )
    for name, series in (("handshakes", hs), ("messages", tp)):
        ratios = [on / off for on, off in zip(series["on"], series["off"], strict=True)]
        print(f"  per-round ratios on/off, {name}: {', '.join(f'{r:.3f}' for r in ratios)}")


if __name__ == "__main__":
    main()
