"""CRL cost: memory per revoked entry, handshake rate, reactor stall during refresh.

    python bench/crl.py [--entries 1000000] [--seconds 8]

Two gateways in front of one mosquitto, in the same run: one with CRL checking (its CRL
served over HTTP on 127.0.0.1), one without. Measured:
- memory: the CRL gateway's RSS with a 1-entry CRL, then after it refreshed to the big one;
- handshakes per second (full mTLS + CONNECT/CONNACK) with the big CRL in force, beside the
  gateway without CRL;
- the longest reactor stall (the gateway's own 10 ms LoopingCall probe, reported in its
  stats line every second) while new big CRLs are fetched, verified and installed.
"""

from __future__ import annotations

import argparse
import os
import time

import handshakes
from harness import NO_LIMITS, raise_fd_limit, report

from gateway import testing as support
from gateway.testing.crl import CrlHttpServer, big_crl_der, crl_der


def lags(gateway: support.Process) -> list[float]:
    """The max_reactor_lag_ms field of each stats line, from the structured log."""
    return [float(e["max_reactor_lag_ms"]) for e in gateway.events() if "max_reactor_lag_ms" in e]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    raise_fd_limit()
    import tempfile

    directory = tempfile.mkdtemp(prefix="mqttgw-bench-crl-")
    p = support.make_pki(directory)
    print(f"building CRLs of {args.entries} entries ...", flush=True)
    bodies = [big_crl_der(p.inter, args.entries, number=n) for n in (2, 3, 4)]
    http = CrlHttpServer()
    http.serve("/devices.crl", 200, big_crl_der(p.inter, 1, number=1))
    http.serve("/root.crl", 200, crl_der(p.root, []))  # the devices CA's own certificate
    broker, broker_port = support.start_mosquitto(directory)
    crl_port, plain_port = support.free_port(), support.free_port()
    crl_conf = (
        support.listener_conf(
            "crl",
            crl_port,
            broker_port,
            p,
            {
                "enable_crl_cache": "true",
                "crl_cache_urls": f"{http.url('/devices.crl')},{http.url('/root.crl')}",
            },
        )
        + "crl_cache.refresh_interval = 15s\nstats_log_interval = 1s\n"
        + NO_LIMITS
    )
    plain_conf = support.listener_conf("plain", plain_port, broker_port, p)
    plain_conf += "stats_log_interval = 1s\n" + NO_LIMITS
    gw = support.start_gateway(
        directory, crl_conf, "gw-crl", ready="crl crl: ready", stats_json=True
    )
    plain = support.start_gateway(directory, plain_conf, "gw-plain", stats_json=True)
    try:
        support.wait_until(lambda: support.port_open(crl_port))
        time.sleep(3)
        rss_small = support.rss_kib(gw.pid)
        http.serve("/devices.crl", 200, bodies[0])
        support.wait_until(lambda: f"entries={args.entries}" in gw.log(), 120, what="big CRL")
        time.sleep(3)
        rss_big = support.rss_kib(gw.pid)
        per_entry = (rss_big - rss_small) * 1024 / args.entries
        print(
            f"RSS {rss_small} KiB with a 1-entry CRL, {rss_big} KiB with {args.entries}: "
            f"{per_entry:.1f} bytes per revoked entry",
            flush=True,
        )

        ns = argparse.Namespace(seconds=args.seconds, workers=args.workers, tls="1.3")
        setup = argparse.Namespace(pki=p, device=p.client("bench-device"))
        with_crl = handshakes.measure(crl_port, gw.pid, setup, ns)
        without = handshakes.measure(plain_port, plain.pid, setup, ns)

        # Stall: two more refreshes, each installing a new big CRL.
        before = len(lags(gw))
        plain_before = len(lags(plain))
        for body in bodies[1:]:
            count = gw.log().count(f"entries={args.entries}")
            http.serve("/devices.crl", 200, body)
            support.wait_until(lambda c=count: gw.log().count(f"entries={args.entries}") > c, 120)
        time.sleep(2)
        crl_lag = max(lags(gw)[before:])
        plain_lag = max(lags(plain)[plain_before:])

        report(
            f"CRL with {args.entries} entries in force (TLS 1.3, ECDSA, "
            f"{args.workers} client processes, {args.seconds:.0f}s each)",
            [
                ("handshakes per second", with_crl[0], without[0]),
                ("handshakes per CPU-second of the gateway", with_crl[1], without[1]),
                ("worst reactor stall during refreshes (ms)", crl_lag, plain_lag),
            ],
            "",
            higher_is_better=True,
            columns=("with CRL", "without CRL"),
            note="the same gateway without CRL checking (stall row: lower is better)",
        )
        print(f"  memory held for the CRL: {per_entry:.1f} bytes per revoked entry (RSS delta)")
    finally:
        gw.stop()
        plain.stop()
        broker.stop()
        http.stop()
        print(f"logs in {directory}")
        assert os.path.isdir(directory)


if __name__ == "__main__":
    main()
