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
import time
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


def hot_path_microseconds(n: int = 1_000_000) -> tuple[float, float]:
    from gateway.status import Histogram

    h = Histogram()
    start = time.perf_counter()
    for _ in range(n):
        h.observe(0.003)
    observe = (time.perf_counter() - start) / n * 1e6

    class Session:
        bytes_in = 0

    session = Session()
    start = time.perf_counter()
    for _ in range(n):
        session.bytes_in += 64
    chunk = (time.perf_counter() - start) / n * 1e6
    return observe, chunk


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
        # The scrapes' own cost, measured where nothing else runs: both gateways idle for
        # the same 20 s, one of them scraped every second.
        idle0 = {n: support.cpu_seconds(g.pid) for n, g in gateways.items()}
        scrapes_before = scrapes[0]
        time.sleep(20)
        idle = {n: support.cpu_seconds(g.pid) - idle0[n] for n, g in gateways.items()}
        idle_scrapes = scrapes[0] - scrapes_before
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
    per_scrape = (idle["on"] - idle["off"]) / max(1, idle_scrapes)
    print(
        f"  idle 20 s: CPU {idle['on']:.2f} s scraped ({idle_scrapes} scrapes of /metrics and "
        f"/status) vs {idle['off']:.2f} s not: {per_scrape * 1000:.1f} ms of CPU per scrape, "
        f"{per_scrape * 100:.2f}% of one core at one scrape per second"
    )
    observe, chunk = hot_path_microseconds()
    print(
        f"  hot path, in process: Histogram.observe {observe:.3f} us (twice per connection: "
        f"handshake, broker connect); the session's byte counter {chunk:.3f} us per relayed "
        "chunk; both always on, admin listener or not"
    )
    for name, series in (("handshakes", hs), ("messages", tp)):
        ratios = [on / off for on, off in zip(series["on"], series["off"], strict=True)]
        print(f"  per-round ratios on/off, {name}: {', '.join(f'{r:.3f}' for r in ratios)}")


if __name__ == "__main__":
    main()
