"""Memory per idle mutual-TLS MQTT connection: N connections held open, RSS growth / N.

    python bench/idle_connections.py [--count 2000]

Each connection does a full TLS 1.3 handshake with a client certificate, sends CONNECT and
reads CONNACK, then stays idle. The RSS growth of the process terminating TLS (the gateway,
or mosquitto reached directly) is divided by the count. For the gateway, the broker's own
growth for the plain upstream connections is shown too.
"""

from __future__ import annotations

import argparse
import gc
import time

from harness import haproxy_column, report, setup

from gateway import testing as support


def hold(port: int, setup_: object, count: int, device: tuple[str, str]) -> list[object]:
    ctx = support.client_context(setup_.pki, device, "1.3")  # type: ignore[attr-defined]
    socks = []
    for i in range(count):
        s = support.tls_connect(port, ctx, timeout=30)
        s.sendall(support.connect_packet(f"idle-{port}-{i}", keep_alive=0))
        assert support.read_exact(s, 4) == b"\x20\x02\x00\x00"
        socks.append(s)
    return socks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    with setup() as s:
        results = {}
        broker_growth_via_gateway = 0.0
        for name, (port, pid) in s.targets().items():
            # Warm up: one connection in and out, so imports and pools are in the baseline.
            for sock in hold(port, s, 5, s.device):
                sock.close()
            time.sleep(0.5)
            before = support.rss_kib(pid)
            broker_before = support.rss_kib(s.broker.pid)
            start = time.monotonic()
            socks = hold(port, s, args.count, s.device)
            elapsed = time.monotonic() - start
            time.sleep(1.0)
            after = support.rss_kib(pid)
            if name == "gateway":
                broker_growth_via_gateway = (
                    support.rss_kib(s.broker.pid) - broker_before
                ) / args.count
            results[name] = (after - before) / args.count
            print(
                f"{name}: {args.count} idle connections opened in {elapsed:.1f}s, "
                f"RSS {before} -> {after} KiB"
            )
            for sock in socks:
                sock.close()
            del socks
            gc.collect()
            time.sleep(1.0)
        report(
            f"Memory per idle mTLS MQTT connection ({args.count} connections)",
            [
                (
                    "RSS growth per connection",
                    results["gateway"],
                    results["mosquitto"],
                    *haproxy_column(results),
                )
            ],
            "KiB",
            higher_is_better=False,
        )
        print(
            f"  (mosquitto's own growth for the gateway's plain upstream connections: "
            f"{broker_growth_via_gateway:.1f} KiB per connection)"
        )


if __name__ == "__main__":
    main()
