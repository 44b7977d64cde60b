"""OCSP checking of client certificates: its cost with a warm cache beside CRL checking, and
a cold storm against a local responder.

    python bench/ocsp_clients.py [--rounds 3] [--seconds 10] [--clients 4] [--storm 1000]

1. Warm cache: two one-process gateways serve at the same time, one checking devices by CRL
   (a 1,000-entry CRL of the devices CA and the root's), one by OCSP (`ocsp_client_check =
   leaf`, a real `openssl ocsp` responder; the device's answer is cached after its first
   connection). Client processes from 16 source addresses alternate their full mTLS
   handshakes (TLS 1.3, CONNECT/CONNACK) between the two; fresh gateways every round.
   Reported: handshakes per CPU-second of each, and OCSP / CRL.
2. Cold storm: ``--storm`` distinct devices (each its own certificate, registered at the CA)
   connect at once, 64 at a time, to a fresh OCSP-checking gateway with nothing cached.
   Reported: the time until every device is admitted, the requests the responder saw, and
   the most requests it had in flight (the gateway's cap, ocsp_client_max_requests, is 16).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import ssl
import statistics
import threading
import time
from typing import Any

from harness import NO_LIMITS, raise_fd_limit
from workers import CONNACK, SOURCES, _handshaker, sources_of, tree_cpu

from gateway import testing as support
from gateway.demo import pki
from gateway.testing.crl import CrlHttpServer, big_crl_der
from gateway.testing.ocsp import OcspWorld


def register_all(world: OcspWorld, certs: list[Any]) -> None:
    """Record certificates as valid in the CA's index.txt at once (what `openssl ca -valid`
    does one process at a time)."""
    lines = []
    for cert in certs:
        expiry = cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
        subject = "/" + "/".join(
            f"{a.rfc4514_attribute_name}={a.value}" for a in reversed(list(cert.subject))
        )
        lines.append(f"V\t{expiry}\t\t{cert.serial_number:X}\tunknown\t{subject}\n")
    with open(os.path.join(world.ca.dir, "index.txt"), "a") as f:
        f.writelines(lines)


def warm(world: OcspWorld, args: argparse.Namespace) -> None:
    http = CrlHttpServer()
    http.serve("/devices.crl", 200, big_crl_der(world.p.inter, 1000))
    http.serve("/root.crl", 200, big_crl_der(world.p.root, 1))
    device = world.p.client("bench-ocsp-device")
    world.ca.register(device[0])
    results: dict[str, list[float]] = {"crl": [], "ocsp": []}
    broker, plain = support.start_mosquitto(world.dir)
    try:
        for r in range(args.rounds):
            ports, gws = {}, {}
            for name in ("crl", "ocsp"):
                port = support.free_port()
                if name == "crl":
                    opts = {
                        "enable_crl_cache": "true",
                        "crl_cache_urls": f"{http.url('/devices.crl')},{http.url('/root.crl')}",
                    }
                else:
                    opts = {
                        "ocsp_client_check": "leaf",
                        "ocsp_client_responder_url": world.responder.url,
                    }
                conf = support.listener_conf(f"{name}{r}", port, plain, world.p, opts)
                conf += NO_LIMITS + "stats_log_interval = 1h\n"
                gws[name] = support.start_gateway(world.dir, conf, f"warm-{name}-{r}")
                ports[name] = port
            # The first connection fills the OCSP cache (and proves both admit the device).
            for name, port in ports.items():
                with support.tls_connect(port, support.client_context(world.p, device)) as s:
                    s.sendall(support.connect_packet("warm", keep_alive=0))
                    assert support.read_exact(s, 4) == CONNACK, name
            names = ["crl", "ocsp"] if r % 2 == 0 else ["ocsp", "crl"]
            cpu0 = {n: tree_cpu(gws[n].pid) for n in names}
            queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
            procs = [
                multiprocessing.Process(
                    target=_handshaker,
                    args=(
                        [ports[n] for n in names],
                        world.p,
                        device,
                        sources_of(i, args.clients),
                        args.seconds,
                        queue,
                    ),
                )
                for i in range(args.clients)
            ]
            for p in procs:
                p.start()
            counts = [sum(c) for c in zip(*(queue.get()[0] for _ in procs), strict=True)]
            for p in procs:
                p.join()
            for n, count in zip(names, counts, strict=True):
                cpu = tree_cpu(gws[n].pid) - cpu0[n]
                results[n].append(count / cpu)
                print(f"  round {r + 1} {n}: {count} handshakes, {cpu:.2f} CPU-s")
            for gw in gws.values():
                gw.stop()
    finally:
        broker.stop()
        http.stop()
    ratios = [o / c for o, c in zip(results["ocsp"], results["crl"], strict=True)]
    print(
        f"\nWarm cache, full mTLS handshakes per CPU-second ({args.rounds} rounds, "
        f"{args.clients} clients from {len(SOURCES)} addresses, both gateways at once):\n"
        f"  CRL checking   {statistics.median(results['crl']):8.1f}\n"
        f"  OCSP checking  {statistics.median(results['ocsp']):8.1f}\n"
        f"  OCSP / CRL     {statistics.median(ratios):8.2f} "
        f"({min(ratios):.2f}-{max(ratios):.2f})"
    )


def storm(world: OcspWorld, args: argparse.Namespace) -> None:
    count = args.storm
    issued = [pki.issue(world.p.inter, f"storm-{i}") for i in range(count)]
    register_all(world, [d.cert for d in issued])
    paths = [d.write(world.dir, f"storm-{i}") for i, d in enumerate(issued)]
    broker, plain = support.start_mosquitto(world.dir)
    port = support.free_port()
    conf = support.listener_conf(
        "storm",
        port,
        plain,
        world.p,
        {
            "ocsp_client_check": "leaf",
            "ocsp_client_responder_url": world.responder.url,
            "ocsp_client_http_timeout": "30s",
        },
    )
    conf += NO_LIMITS + "connect_timeout = 60s\nstats_log_interval = 1h\n"
    gw = support.start_gateway(world.dir, conf, "storm")
    in_flight = [0, 0]  # now, most
    lock = threading.Lock()
    answer = world.responder.server.RequestHandlerClass._answer  # type: ignore[attr-defined]

    def counting(handler: Any, request: bytes) -> None:
        with lock:
            in_flight[0] += 1
            in_flight[1] = max(in_flight[1], in_flight[0])
        try:
            answer(handler, request)
        finally:
            with lock:
                in_flight[0] -= 1

    world.responder.server.RequestHandlerClass._answer = counting  # type: ignore[attr-defined]
    hits0 = world.responder.hits
    outcomes: list[bool] = []
    todo = list(enumerate(paths))

    def device_loop() -> None:
        while True:
            with lock:
                if not todo:
                    return
                i, cert = todo.pop()
            ctx = support.client_context(world.p, cert)
            raw = socket.create_connection(
                ("127.0.0.1", port), timeout=60, source_address=(SOURCES[i % len(SOURCES)], 0)
            )
            try:
                with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                    s.sendall(support.connect_packet(f"storm-{i}", keep_alive=0))
                    ok = support.read_exact(s, 4) == CONNACK
            except (OSError, ssl.SSLError):
                ok = False
            with lock:
                outcomes.append(ok)

    start = time.monotonic()
    threads = [threading.Thread(target=device_loop) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - start
    gw.stop()
    broker.stop()
    print(
        f"\nCold storm: {count} distinct devices at once (64 connecting at a time), nothing "
        f"cached: all admitted: {all(outcomes)} ({sum(outcomes)}/{len(outcomes)}) in "
        f"{took:.1f} s; responder requests {world.responder.hits - hits0} (one per device: "
        f"{count}); most in flight at the responder {in_flight[1]} (cap 16)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--storm", type=int, default=1000)
    parser.add_argument("--skip-warm", action="store_true")
    args = parser.parse_args()
    raise_fd_limit()
    import tempfile

    world = OcspWorld(tempfile.mkdtemp(prefix="mqttgw-bench-ocsp-clients-"))
    try:
        if not args.skip_warm:
            warm(world, args)
        if args.storm:
            storm(world, args)
    finally:
        world.responder.stop()


if __name__ == "__main__":
    main()
