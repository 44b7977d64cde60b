"""MQTT over WebSocket: what a device costs on a wss listener, beside the same gateway's TLS
listener and mosquitto's own WebSocket-over-TLS listener, in one run, interleaved rounds.

    python bench/websocket.py [--messages 100000] [--rounds 3] [--connects 300] [--idle 1000]

- relay: QoS 0 PUBLISHes of 64 bytes, one per WebSocket message, each in its own TLS record, from
  one publisher to one subscriber, both through the target; messages per second and per
  CPU-second of the process terminating TLS (the gateway; mosquitto: its CPU also routes);
- connects: full handshake + (upgrade +) CONNECT/CONNACK, then close, from 16 source
  addresses (127.0.0.10-25); per CPU-second of the target;
- idle: memory per idle session (RSS growth / sessions), a fresh gateway for each transport.

The clients are Python (wsproto's client for WebSocket, frames built once) on the same
2-core machine: absolute rates are bounded by them too; the per-CPU-second figures of the
server process are the comparison.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import statistics
import tempfile
import threading
import time

from harness import NO_LIMITS, raise_fd_limit
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Message, Request

from gateway import testing as support

PAYLOAD = b"x" * 64
TOPIC = b"b"
PUBLISH = bytes([0x30, 2 + len(TOPIC) + len(PAYLOAD)]) + b"\x00\x01" + TOPIC + PAYLOAD
SOURCES = [f"127.0.0.{i}" for i in range(10, 26)]


class Client:
    """A device: TLS with its certificate, then (ws) the upgrade; MQTT bytes both ways."""

    def __init__(self, port: int, ctx: ssl.SSLContext, ws: bool, source: str = "127.0.0.1"):
        raw = socket.create_connection(("127.0.0.1", port), timeout=60, source_address=(source, 0))
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        self.ws: WSConnection | None = None
        self.pending: list[bytes] = []
        if ws:
            self.ws = WSConnection(ConnectionType.CLIENT)
            self.sock.sendall(
                self.ws.send(Request(host="localhost", target="/mqtt", subprotocols=["mqtt"]))
            )
            while True:
                self.ws.receive_data(self.sock.recv(65536))
                if any(isinstance(e, AcceptConnection) for e in self.ws.events()):
                    break

    def frame(self, data: bytes) -> bytes:
        return self.ws.send(Message(data=data)) if self.ws is not None else data

    def send(self, data: bytes) -> None:
        self.sock.sendall(self.frame(data))

    def recv(self) -> bytes:
        """MQTT bytes, as they come (ConnectionError once the server closed)."""
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("the server closed the connection")
        if self.ws is None:
            return data
        self.ws.receive_data(data)
        return b"".join(bytes(e.data) for e in self.ws.events() if isinstance(e, Message))

    def connect(self, client_id: str) -> None:
        self.send(support.connect_packet(client_id, keep_alive=0))
        got = b""
        while len(got) < 4:
            got += self.recv()
        assert got[:2] == b"\x20\x02", got


def relay(
    port: int, pid: int, ctx: ssl.SSLContext, ws: bool, messages: int, round_: int
) -> tuple[float, float]:
    sub = Client(port, ctx, ws)
    sub.connect(f"sub-{port}-{ws}-{round_}")  # (a new id each round: no session taken over)
    sub.send(b"\x82\x06\x00\x01\x00\x01b\x00")
    got = b""
    while len(got) < 5:
        got += sub.recv()
    pub = Client(port, ctx, ws)
    pub.connect(f"pub-{port}-{ws}-{round_}")
    frames = [pub.frame(PUBLISH) for _ in range(1000)]  # framed once (masks differ)
    cpu0, start = support.cpu_seconds(pid), time.monotonic()

    def publish() -> None:  # one message per TLS record, as a device writes them
        send = pub.sock.sendall
        for i in range(messages):
            send(frames[i % 1000])

    writer = threading.Thread(target=publish)
    writer.start()
    expected, received = messages * len(PUBLISH), 0
    while received < expected:
        received += len(sub.recv())
    elapsed, cpu = time.monotonic() - start, support.cpu_seconds(pid) - cpu0
    writer.join()
    for c in (pub, sub):
        c.sock.close()
    return messages / elapsed, messages / cpu if cpu else float("nan")


def connects(port: int, pid: int, ctx: ssl.SSLContext, ws: bool, count: int) -> float:
    cpu0 = support.cpu_seconds(pid)
    for i in range(count):
        c = Client(port, ctx, ws, SOURCES[i % len(SOURCES)])
        c.connect(f"c{i}")
        c.sock.close()
    cpu = support.cpu_seconds(pid) - cpu0
    return count / cpu if cpu else float("nan")


def idle(port: int, pid: int, ctx: ssl.SSLContext, ws: bool, count: int) -> float:
    before = support.rss_kib(pid)
    clients = []
    for i in range(count):
        c = Client(port, ctx, ws, SOURCES[i % len(SOURCES)])
        c.connect(f"idle-{ws}-{i}")
        clients.append(c)
    time.sleep(1.0)
    per = (support.rss_kib(pid) - before) / count
    for c in clients:
        c.sock.close()
    time.sleep(1.0)
    return per


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connects", type=int, default=300)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--idle-only", action="store_true", help="only the memory figures")
    args = parser.parse_args()
    raise_fd_limit()
    directory = tempfile.mkdtemp(prefix="mqttgw-bench-ws-")
    p = support.make_pki(directory)
    mosq_ws = support.free_port()
    broker, plain = support.start_mosquitto(
        directory,
        extra=support.mosquitto_mtls_listener(mosq_ws, p, protocol="websockets"),
    )
    tls, wss = support.free_port(), support.free_port()
    conf = support.listener_conf("t", tls, plain, p) + support.listener_conf(
        "w", wss, plain, p, family="wss"
    )
    gateway = support.start_gateway(directory, conf + NO_LIMITS + "log_connect = false\n")
    ctx = support.client_context(p, p.client("bench-ws"))
    targets = {
        "gw-tls": (tls, gateway.pid, False),
        "gw-wss": (wss, gateway.pid, True),
        "mosquitto-ws": (mosq_ws, broker.pid, True),
    }
    results: dict[str, dict[str, list[float]]] = {n: {} for n in targets}
    try:
        for r in range(0 if args.idle_only else args.rounds):
            order = list(targets)[r % 3 :] + list(targets)[: r % 3]
            for name in order:
                port, pid, ws = targets[name]
                rate, per_cpu = relay(port, pid, ctx, ws, args.messages, r)
                hs = connects(port, pid, ctx, ws, args.connects)
                out = results[name]
                out.setdefault("relay/s", []).append(rate)
                out.setdefault("relay per CPU-s", []).append(per_cpu)
                out.setdefault("connects per CPU-s", []).append(hs)
                print(f"  round {r + 1} {name}: {rate:.0f}/s, {per_cpu:.0f}/CPU-s, {hs:.1f}/CPU-s")
        # Memory: a fresh gateway for each transport (a process that served the other one
        # would reuse the memory its closed sessions freed).
        for name, family, ws in (("gw-tls", "ssl", False), ("gw-wss", "wss", True)):
            port = support.free_port()
            conf = support.listener_conf("i", port, plain, p, family=family) + NO_LIMITS
            fresh = support.start_gateway(directory, conf + "log_connect = false\n", f"gw-{family}")
            try:
                per = idle(port, fresh.pid, ctx, ws, args.idle)
            finally:
                fresh.stop()
            results[name]["idle KiB/session"] = [per]
    finally:
        gateway.stop()
        broker.stop()
    print(
        f"\n64-byte QoS 0 messages, one per WebSocket message (TLS record), 1 publisher -> 1 "
        f"subscriber, {args.messages} a round; connects from 16 addresses; {args.rounds} rounds"
    )
    measures = ["relay/s", "relay per CPU-s", "connects per CPU-s", "idle KiB/session"]
    print(f"  {'':14}" + "".join(f"{m:>22}" for m in measures))
    med = {n: {m: statistics.median(v) for m, v in results[n].items()} for n in targets}
    for name in targets:
        row = "".join(f"{med[name].get(m, float('nan')):22.1f}" for m in measures)
        print(f"  {name:14}{row}")
    for a, b in (("gw-wss", "gw-tls"), ("gw-wss", "mosquitto-ws")):
        ratios = "".join(
            f"{med[a][m] / med[b][m]:22.2f}" if m in med[a] and m in med[b] else f"{'-':>22}"
            for m in measures
        )
        print(f"  {a}/{b}:".ljust(16) + ratios)


if __name__ == "__main__":
    os.environ.setdefault("MQTTGW_TEST_LOG_CONNECT", "")
    main()
