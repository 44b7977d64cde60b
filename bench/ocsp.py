"""Handshakes per second with OCSP stapling requested by every client, vs stapling off.

    python bench/ocsp.py [--seconds 8] [--workers 2] [--tls 1.3]

Two gateways in front of one mosquitto, in the same run: one staples (a real `openssl ocsp`
responder on 127.0.0.1 behind it), one does not. pyOpenSSL clients send status_request on
every full mTLS handshake, then CONNECT and read CONNACK. Reported: handshakes per second,
per CPU-second of the gateway, and the share of handshakes that received a staple.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import time

from harness import NO_LIMITS, raise_fd_limit, report
from OpenSSL import SSL

from gateway import testing as support
from gateway.demo import pki
from gateway.testing.ocsp import OpensslOcspResponder


def worker(
    port: int,
    ca_file: str,
    device: tuple[str, str],
    tls: str,
    seconds: float,
    out: multiprocessing.Queue,
) -> None:  # type: ignore[type-arg]
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    version = SSL.TLS1_3_VERSION if tls == "1.3" else SSL.TLS1_2_VERSION
    ctx.set_min_proto_version(version)
    ctx.set_max_proto_version(version)
    ctx.load_verify_locations(ca_file.encode())
    ctx.use_certificate_chain_file(device[0].encode())
    ctx.use_privatekey_file(device[1].encode())
    ctx.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errno, depth, ok: bool(ok))
    stapled = [0]

    def on_status(conn: SSL.Connection, data: bytes, _: object) -> bool:
        stapled[0] += 1 if data else 0
        return True

    ctx.set_ocsp_client_callback(on_status)
    connect = support.connect_packet("ocsp-bench", keep_alive=0)
    done = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.settimeout(None)  # pyOpenSSL needs a blocking socket
        conn = SSL.Connection(ctx, sock)
        conn.request_ocsp()
        conn.set_connect_state()
        conn.do_handshake()
        conn.sendall(connect)
        got = b""
        while len(got) < 4:
            got += conn.recv(4 - len(got))
        if got != b"\x20\x02\x00\x00":
            raise RuntimeError(f"no CONNACK: {got!r}")
        conn.close()
        sock.close()
        done += 1
    out.put((done, stapled[0]))


def measure(
    port: int, pid: int, ca_file: str, device: tuple[str, str], args: argparse.Namespace
) -> tuple[float, float, float]:
    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    cpu0 = support.cpu_seconds(pid)
    start = time.monotonic()
    procs = [
        multiprocessing.Process(
            target=worker, args=(port, ca_file, device, args.tls, args.seconds, queue)
        )
        for _ in range(args.workers)
    ]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=args.seconds + 60) for _ in procs]
    for proc in procs:
        proc.join()
    elapsed = time.monotonic() - start
    cpu = support.cpu_seconds(pid) - cpu0
    total = sum(r[0] for r in results)
    stapled = sum(r[1] for r in results)
    return total / elapsed, total / cpu if cpu else float("nan"), stapled / total if total else 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tls", default="1.3", choices=["1.3", "1.2"])
    args = parser.parse_args()
    raise_fd_limit()
    import tempfile

    directory = tempfile.mkdtemp(prefix="mqttgw-bench-ocsp-")
    p = support.make_pki(directory)
    ca = pki.OpensslCA.create(os.path.join(directory, "ca"), p.inter)
    inter_pem = os.path.join(directory, "inter.pem")
    with open(inter_pem, "wb") as f:
        f.write(pki.cert_pem(p.inter.cert))
    responder = OpensslOcspResponder(ca.dir, inter_pem, (inter_pem, os.path.join(ca.dir, "ca.key")))
    server = pki.issue(p.inter, "localhost", server=True, ocsp_url=responder.url).write(
        directory, "srv"
    )
    ca.register(server[0])
    broker, broker_port = support.start_mosquitto(directory)
    on_port, off_port = support.free_port(), support.free_port()
    certs = {"certfile": server[0], "keyfile": server[1]}
    on_conf = support.listener_conf(
        "on", on_port, broker_port, p, dict(certs, enable_ocsp_stapling="true")
    )
    off_conf = support.listener_conf("off", off_port, broker_port, p, certs) + NO_LIMITS
    on_conf += NO_LIMITS
    gw_on = support.start_gateway(directory, on_conf, "gw-on")
    gw_off = support.start_gateway(directory, off_conf, "gw-off")
    device = p.client("bench-device")
    try:
        support.wait_until(lambda: "status=good" in gw_on.log(), 30, what="staple")
        on = measure(on_port, gw_on.pid, p.ca_file, device, args)
        off = measure(off_port, gw_off.pid, p.ca_file, device, args)
        report(
            f"Handshakes with status_request from every client, TLS {args.tls}, ECDSA, "
            f"{args.workers} client processes, {args.seconds:.0f}s each",
            [
                ("handshakes per second", on[0], off[0]),
                ("handshakes per CPU-second of the gateway", on[1], off[1]),
                ("share of handshakes that got a staple", on[2], off[2]),
            ],
            "",
            higher_is_better=True,
            columns=("stapling", "no stapling"),
            note="the same gateway configuration without stapling",
        )
    finally:
        gw_on.stop()
        gw_off.stop()
        broker.stop()
        responder.stop()


if __name__ == "__main__":
    main()
