"""What the broker side costs, in the same sitting:

1. full mTLS handshakes + CONNECT per CPU-second of the gateway: today's plain path against
   peer_cert_as_username = cn with a PROXY v2 header to the broker (both gateways reach
   mosquitto through HAProxy from Debian's packages: one frontend plain, one with
   accept-proxy, so that only the gateway differs);
2. relayed 64-byte QoS 0 messages per CPU-second of the gateway: plain TCP to mosquitto
   against TLS to mosquitto's own TLS listener (the extra TLS layer's cost);
3. a reconnect storm of N devices through a TLS upstream, with and without broker session
   resumption: wall time, gateway CPU, and how many broker handshakes resumed.

    python bench/broker_side.py [--seconds 5] [--messages 100000] [--rounds 3] [--storm 1000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request

from handshakes import measure as measure_handshakes
from harness import NO_LIMITS, raise_fd_limit, report
from throughput import PAYLOAD
from throughput import measure as measure_throughput

from gateway import testing as support
from gateway.demo import pki

VARIANTS = {
    "cn+v2": lambda plain, proxied: (
        proxied,
        {"peer_cert_as_username": "cn", "upstream_proxy_protocol": "v2"},
    ),
    "cn": lambda plain, proxied: (plain, {"peer_cert_as_username": "cn"}),
    "v2": lambda plain, proxied: (proxied, {"upstream_proxy_protocol": "v2"}),
    "control": lambda plain, proxied: (plain, {}),
}


class _Setup:
    def __init__(self, pki_: support.Pki, device: tuple[str, str]) -> None:
        self.pki, self.device = pki_, device


def storm_worker(port: int, p: support.Pki, device: tuple[str, str], count: int, q: object) -> None:
    ctx = support.client_context(p, device)
    for i in range(count):
        with support.tls_connect(port, ctx, timeout=30) as s:
            s.sendall(support.connect_packet(f"storm-{os.getpid()}-{i}", keep_alive=0))
            if support.read_exact(s, 4) != b"\x20\x02\x00\x00":
                raise RuntimeError("no CONNACK")
    q.put(count)  # type: ignore[attr-defined]


def storm(port: int, pid: int, admin: int, p: support.Pki, device: tuple[str, str], n: int) -> dict:
    before = _counters(admin)
    cpu0, start = support.cpu_seconds(pid), time.monotonic()
    q: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    procs = [
        multiprocessing.Process(target=storm_worker, args=(port, p, device, n // 4, q))
        for _ in range(4)
    ]
    for proc in procs:
        proc.start()
    done = sum(q.get(timeout=600) for _ in procs)
    for proc in procs:
        proc.join()
    after = _counters(admin)
    return {
        "devices": done,
        "seconds": time.monotonic() - start,
        "cpu": support.cpu_seconds(pid) - cpu0,
        "broker_handshakes": after["upstream_tls_handshakes"] - before["upstream_tls_handshakes"],
        "resumed": after["upstream_tls_resumed"] - before["upstream_tls_resumed"],
    }


def _counters(admin: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=10) as r:
        return json.loads(r.read())["listeners"][0]["counters"]  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--storm", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tls", default="1.3")
    parser.add_argument(
        "--variant",
        default="cn+v2",
        choices=["cn+v2", "cn", "v2", "control"],
        help="what the second handshake gateway adds (control: nothing, the noise floor)",
    )
    args = parser.parse_args()
    raise_fd_limit()
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        raise SystemExit("needs HAProxy (Debian package haproxy)")
    d = tempfile.mkdtemp(prefix="mqttgw-bench-")
    p = support.make_pki(d)
    broker_ca = pki.make_ca("broker CA")
    bcert, bkey = pki.issue(broker_ca, "localhost", server=True).write(d, "broker")
    bca = pki.write_ca_bundle(os.path.join(d, "broker-ca.pem"), broker_ca)
    tls_port = support.free_port()
    broker, plain = support.start_mosquitto(
        d,
        extra=(
            f"max_connections -1\nlistener {tls_port} 127.0.0.1\ncertfile {bcert}\nkeyfile {bkey}\n"
        ),
    )
    ha_plain, ha_proxy = support.free_port(), support.free_port()
    cfg = os.path.join(d, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(
            "global\n  maxconn 8000\ndefaults\n  mode tcp\n  timeout connect 5s\n"
            "  timeout client 60s\n  timeout server 60s\n"
            f"listen plain\n  bind 127.0.0.1:{ha_plain}\n  server b 127.0.0.1:{plain}\n"
            f"listen proxied\n  bind 127.0.0.1:{ha_proxy} accept-proxy\n"
            f"  server b 127.0.0.1:{plain}\n"
        )
    ha = subprocess.Popen([haproxy, "-f", cfg, "-db"], stdout=subprocess.DEVNULL)
    support.wait_until(lambda: support.port_open(ha_plain) and support.port_open(ha_proxy))
    tls_up = {
        "upstream_tls": "true",
        "upstream_cacertfile": bca,
        "upstream_server_name": "localhost",
    }
    gws: dict[str, tuple[int, int, support.Process]] = {}
    specs = {
        "plain": (ha_plain, {}),
        "identity+proxy": (
            ha_proxy,
            {"peer_cert_as_username": "cn", "upstream_proxy_protocol": "v2"},
        ),
        "direct": (plain, {}),
        "tls": (tls_port, tls_up),
        "tls-noreuse": (tls_port, dict(tls_up, upstream_tls_session_reuse="false")),
    }
    try:
        for name, (up, extra) in specs.items():
            port, admin = support.free_port(), support.free_port()
            conf = support.listener_conf("b", port, up, p, extra) + NO_LIMITS
            conf += f"admin.listen = {admin}\n"
            gws[name] = (port, admin, support.start_gateway(d, conf, f"gw-{name}"))
        lines = os.path.join(d, "lines.txt")
        with open(lines, "w") as f:
            f.write(("x" * PAYLOAD + "\n") * args.messages)
        s = _Setup(p, p.client("bench-device"))
        hs: dict[str, list[float]] = {"plain": [], "identity+proxy": []}
        tp: dict[str, list[float]] = {"direct": [], "tls": []}
        for r in range(args.rounds):
            for name in ("plain", "identity+proxy") if r % 2 == 0 else ("identity+proxy", "plain"):
                port, _, gw = gws[name]
                hs[name].append(measure_handshakes(port, gw.pid, s, args)[1])
            for name in ("direct", "tls") if r % 2 == 0 else ("tls", "direct"):
                port, _, gw = gws[name]
                tp[name].append(measure_throughput(port, gw.pid, s, args.messages, lines)[1])
            print(
                f"round {r + 1}: handshakes/CPU-s plain {hs['plain'][-1]:.0f}, identity+proxy "
                f"{hs['identity+proxy'][-1]:.0f}; messages/CPU-s direct {tp['direct'][-1]:.0f}, "
                f"tls {tp['tls'][-1]:.0f}"
            )
        storms = {}
        for name in ("tls", "tls-noreuse", "tls", "tls-noreuse"):
            port, admin, gw = gws[name]
            storms.setdefault(name, []).append(storm(port, gw.pid, admin, p, s.device, args.storm))
    finally:
        for _, _, gw in gws.values():
            gw.stop()
        ha.terminate()
        broker.stop()
    report(
        f"Broker side, {args.rounds} interleaved rounds",
        [
            (
                "handshakes per CPU-second (median)",
                statistics.median(hs["identity+proxy"]),
                statistics.median(hs["plain"]),
            ),
        ],
        "handshakes",
        higher_is_better=True,
        columns=("cn+PROXYv2", "plain"),
        note="today's plain path",
    )
    report(
        "Relayed 64-byte QoS 0 messages",
        [
            (
                "messages per CPU-second (median)",
                statistics.median(tp["tls"]),
                statistics.median(tp["direct"]),
            )
        ],
        "messages",
        higher_is_better=True,
        columns=("TLS upstream", "plain TCP"),
        note="plain TCP upstream",
    )
    print(f"\nReconnect storm of {args.storm} devices through a TLS upstream (two runs each):")
    for name, runs in storms.items():
        for run in runs:
            print(
                f"  {name:12} {run['seconds']:.1f} s, {run['devices'] / run['cpu']:.0f} devices "
                f"per CPU-second of the gateway, broker handshakes {run['broker_handshakes']}, "
                f"resumed {run['resumed']}"
            )


if __name__ == "__main__":
    main()
