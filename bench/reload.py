"""A reload with N idle mTLS connections open: how long the reactor stalls, how long the
reload takes, and whether every connection survives.

    python bench/reload.py [--count 2000]

The gateway checks CRLs (served on 127.0.0.1) and holds N idle relayed sessions. The reload
changes the server certificate and the CA bundle (one more CA appended), which is the heavy
path: a new context, a new CRL service whose first round is awaited, then a sweep of every
live session against the new revocation data. Reported: the worst reactor stall in the
stats periods around the reload (the gateway's 10 ms probe, 1-second stats lines), the time
from SIGHUP to "reload applied", the gateway's CPU time in that span, and how many of the N
sessions still answer a PINGREQ afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import tempfile
import time

from harness import NO_LIMITS, raise_fd_limit

from gateway import testing as support
from gateway.demo import pki
from gateway.testing.crl import CrlHttpServer, crl_der


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    raise_fd_limit()
    directory = tempfile.mkdtemp(prefix="mqttgw-bench-")
    p = support.make_pki(directory)
    http = CrlHttpServer()
    http.serve("/d.crl", 200, crl_der(p.inter, []))
    http.serve("/r.crl", 200, crl_der(p.root, []))
    broker, broker_port = support.start_mosquitto(directory, extra="max_connections -1\n")
    cert, key, cas = (os.path.join(directory, n) for n in ("srv.pem", "srv.key", "cas.pem"))
    shutil.copy(p.server_cert, cert)
    shutil.copy(p.server_key, key)
    shutil.copy(p.ca_file, cas)
    port = support.free_port()
    conf = support.listener_conf(
        "r",
        port,
        broker_port,
        p,
        {
            "certfile": cert,
            "keyfile": key,
            "cacertfile": cas,
            "enable_crl_cache": "true",
            "crl_cache_urls": f"{http.url('/d.crl')},{http.url('/r.crl')}",
        },
    )
    conf += NO_LIMITS + "stats_log_interval = 1s\n"
    gw = support.start_gateway(directory, conf, ready="crl r: ready", stats_json=True)
    socks = []
    try:
        support.wait_until(lambda: support.port_open(port))
        ctx = support.client_context(p, p.client("idle"))
        for i in range(args.count):
            s = support.tls_connect(port, ctx, timeout=30)
            s.sendall(support.connect_packet(f"idle-{i}", keep_alive=0))
            assert support.read_exact(s, 4) == b"\x20\x02\x00\x00"
            socks.append(s)
        time.sleep(2.5)  # quiet stats periods before the reload
        pki.issue(p.inter, "localhost", server=True).write(directory, "srv")
        with open(cas, "ab") as f:
            f.write(pki.cert_pem(pki.make_ca("another CA").cert))
        before_events = len(gw.events())
        cpu0 = support.cpu_seconds(gw.pid)
        start = time.monotonic()
        gw.proc.send_signal(signal.SIGHUP)
        support.wait_until(lambda: "reload applied" in gw.log(), 60)
        took = time.monotonic() - start
        cpu = support.cpu_seconds(gw.pid) - cpu0
        time.sleep(2.5)  # the periods after the reload, the sweep included
        lags = [
            float(e["max_reactor_lag_ms"])
            for e in gw.events()[before_events:]
            if "max_reactor_lag_ms" in e
        ]
        alive = 0
        for s in socks:
            s.sendall(b"\xc0\x00")
        for s in socks:
            try:
                if support.read_exact(s, 2) == b"\xd0\x00":
                    alive += 1
            except OSError:
                pass
        applied = next(line for line in gw.log().splitlines() if "reload applied" in line)
        print(applied.split("] ", 1)[1])
        print(
            f"\nReload with {args.count} idle mTLS sessions (new certificate + CA bundle, CRL "
            f"checking on):\n"
            f"  SIGHUP to 'reload applied': {took:.2f} s wall, {cpu:.2f} s of gateway CPU\n"
            f"  worst reactor stall in the periods around it: {max(lags):.1f} ms "
            f"(per second: {', '.join(f'{x:.0f}' for x in lags)})\n"
            f"  sessions alive afterwards: {alive} of {args.count}"
        )
    finally:
        for s in socks:
            s.close()
        gw.stop()
        broker.stop()
        http.stop()


if __name__ == "__main__":
    main()
