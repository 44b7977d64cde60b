"""What the authorization hook costs a full handshake: full mTLS handshakes + CONNECT per
CPU-second of two gateways in the same run, one with ``auth_http_url`` (its cache warm: the
clients reuse one certificate and client id, as a device reconnecting does), one without.

    python bench/auth_hook.py [--seconds 6] [--rounds 4] [--workers 2] [--cold]

``--cold``: ``auth_http_cache_ttl = 0``, the hook asked at every CONNECT (a small Python HTTP
service in this process answers; its own CPU is not counted, the gateway's is). Rounds
alternate which gateway goes first (interleaved, same sitting); the figure is the ratio
hook on / off of handshakes per CPU-second of the gateway.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from admission_cost import _Setup
from handshakes import measure
from harness import NO_LIMITS, raise_fd_limit

from gateway import testing as support


class _Allow(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # (persistent connections, as the gateway's client keeps)
    disable_nagle_algorithm = True  # (else each answer waits for a delayed ACK: 40 ms)
    asked = 0
    connections = 0

    def setup(self) -> None:
        super().setup()
        _Allow.connections += 1

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        _Allow.asked += 1
        body = b'{"result": "allow"}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tls", default="1.3", choices=["1.3", "1.2"])
    parser.add_argument("--cold", action="store_true", help="no cache: ask at every CONNECT")
    args = parser.parse_args()
    raise_fd_limit()
    hook = ThreadingHTTPServer(("127.0.0.1", 0), _Allow)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{hook.server_address[1]}/auth"
    directory = tempfile.mkdtemp(prefix="mqttgw-bench-")
    p = support.make_pki(directory)
    broker, broker_port = support.start_mosquitto(directory)
    ports = {"off": support.free_port(), "on": support.free_port()}
    extra = {"auth_http_url": url, "auth_http_cache_ttl": "0" if args.cold else "1h"}
    gateways = {
        name: support.start_gateway(
            directory,
            support.listener_conf(name, ports[name], broker_port, p, extra if name == "on" else {})
            + NO_LIMITS
            + "log_connect = false\n",
            f"gw-{name}",
        )
        for name in ("off", "on")
    }
    s = _Setup(p, p.client("bench-device"))
    per_cpu: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for round_ in range(args.rounds):
            for name in ("off", "on") if round_ % 2 == 0 else ("on", "off"):
                rate, cpu_rate = measure(ports[name], gateways[name].pid, s, args)
                per_cpu[name].append(cpu_rate)
                print(f"round {round_ + 1} hook {name}: {rate:.0f}/s, {cpu_rate:.0f}/CPU-s")
    finally:
        for gw in gateways.values():
            gw.stop()
        broker.stop()
        hook.shutdown()
    ratios = [on / off for on, off in zip(per_cpu["on"], per_cpu["off"], strict=True)]
    print(
        f"\nFull mTLS handshakes + CONNECT per CPU-second of the gateway, TLS {args.tls}, "
        f"{args.rounds} interleaved rounds of {args.seconds:.0f}s; hook "
        f"{'asked at every CONNECT' if args.cold else 'cache warm'} ({_Allow.asked} requests "
        f"on {_Allow.connections} connections)"
    )
    print(f"  hook on (median):  {statistics.median(per_cpu['on']):.1f}")
    print(f"  hook off (median): {statistics.median(per_cpu['off']):.1f}")
    print(
        f"  on/off per round: {', '.join(f'{r:.3f}' for r in ratios)}; "
        f"median {statistics.median(ratios):.3f}"
    )


if __name__ == "__main__":
    main()
