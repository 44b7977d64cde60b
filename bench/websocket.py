"""MQTT over WebSocket: what a device costs on a wss listener, beside the same gateway's TLS
listener and mosquitto's own WebSocket-over-TLS listener, in one run, interleaved rounds.

    python bench/websocket.py [--messages 100000] [--rounds 3] [--connects 300] [--idle 1000]
                              [--mixed]

- relay: QoS 0 PUBLISHes of 64 bytes (``--mixed``: 48 to 80), one per WebSocket message,
  each in its own TLS record, from one publisher (a process of its own) to one subscriber,
  both through the target; messages per second and per CPU-second of the process
  terminating TLS (the gateway; mosquitto: its CPU also routes);
- connects: full handshake + (upgrade +) CONNECT/CONNACK, then close, from 16 source
  addresses (127.0.0.10-25); per CPU-second of the target;
- idle: memory per idle session (RSS growth / sessions), a fresh gateway for each transport.

The clients are Python (wsproto's client for the upgrade, frames built once; the subscriber
counts payload bytes from the frame headers) on the same 2-core machine: absolute rates are
bounded by them too; the per-CPU-second figures of the server process are the comparison.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import ssl
import statistics
import tempfile
import time
from typing import Any

from harness import NO_LIMITS, raise_fd_limit
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Message, Request

from gateway import testing as support

TOPIC = b"b"


def publish(size: int) -> bytes:
    """A QoS 0 PUBLISH on TOPIC with ``size`` bytes of payload."""
    return bytes([0x30, 2 + len(TOPIC) + size]) + b"\x00\x01" + TOPIC + b"x" * size


def publishes(mixed: bool) -> list[bytes]:
    """The 1000 messages a publisher cycles through: 64 bytes of payload each, or (mixed)
    48 to 80 bytes, no two neighbours of one size (the short path's runs of one size never
    form: its frame-by-frame loop is measured)."""
    return [publish(48 + (i * 7) % 33 if mixed else 64) for i in range(1000)]


SOURCES = [f"127.0.0.{i}" for i in range(10, 26)]


class MemoryTLS:
    """TLS through memory BIOs on a plain socket (the publisher's): ``write_records`` makes
    one TLS record per message, as a device writes them, and sends them all with one
    ``sendall``, so that the publisher outruns the gateway and each target is measured
    saturated (a publisher paying a Python ``sendall`` per record ran at about the gateway's
    pace, and the gateway's cost per message then followed the noise of the machine)."""

    def __init__(self, raw: socket.socket, ctx: ssl.SSLContext) -> None:
        self.raw, self.incoming, self.outgoing = raw, ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
        self._flush()

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.raw.sendall(data)

    def _fill(self) -> None:
        data = self.raw.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.incoming.write(data)

    def sendall(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()

    def write_records(self, messages: list[bytes]) -> None:
        write = self.tls.write
        for m in messages:
            write(m)
        self._flush()

    def recv(self, size: int) -> bytes:
        while True:
            try:
                return self.tls.read(size)
            except ssl.SSLWantReadError:
                self._fill()

    def close(self) -> None:
        self.raw.close()


class Client:
    """A device: TLS with its certificate, then (ws) the upgrade; MQTT bytes both ways."""

    def __init__(
        self,
        port: int,
        ctx: ssl.SSLContext,
        ws: bool,
        source: str = "127.0.0.1",
        memory: bool = False,
    ) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=60, source_address=(source, 0))
        self.sock: Any = (
            MemoryTLS(raw, ctx) if memory else ctx.wrap_socket(raw, server_hostname="localhost")
        )
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


def publisher(
    port: int,
    ctx: ssl.SSLContext,
    ws: bool,
    client_id: str,
    messages: int,
    mixed: bool,
    ready,
    go,
    done,
) -> None:
    """The publisher, in a process of its own: the subscriber's parsing does not slow it
    (one process for both made the gateway's reads smaller on the slower transport)."""
    pub = Client(port, ctx, ws, memory=True)
    pub.connect(client_id)
    frames = [pub.frame(m) for m in publishes(mixed)]  # framed once (masks differ)
    ready.set()
    go.wait()
    for i in range(0, messages, 1000):  # one message per TLS record, 1000 records a send
        pub.sock.write_records(frames[: min(1000, messages - i)])
    done.wait(120)  # (held open until the subscriber has everything)


def payload_bytes(buffer: bytearray) -> int:
    """The payload bytes of the whole server frames (unmasked) at the front of ``buffer``,
    which loses them: a cheap count in place of wsproto's events."""
    pos, total, n = 0, 0, len(buffer)
    while n - pos >= 2:
        length, head = buffer[pos + 1] & 0x7F, 2
        if length == 126:
            if n - pos < 4:
                break
            length, head = int.from_bytes(buffer[pos + 2 : pos + 4], "big"), 4
        elif length == 127:
            if n - pos < 10:
                break
            length, head = int.from_bytes(buffer[pos + 2 : pos + 10], "big"), 10
        if n - pos < head + length:
            break
        total += length
        pos += head + length
    del buffer[:pos]
    return total


def relay(
    port: int, pid: int, ctx: ssl.SSLContext, ws: bool, messages: int, round_: int, mixed: bool
) -> tuple[float, float]:
    sub = Client(port, ctx, ws)
    sub.connect(f"sub-{port}-{ws}-{round_}")  # (a new id each round: no session taken over)
    sub.send(b"\x82\x06\x00\x01\x00\x01b\x00")
    got = b""
    while len(got) < 5:
        got += sub.recv()
    spawn = multiprocessing.get_context("fork")
    ready, go, done = spawn.Event(), spawn.Event(), spawn.Event()
    args = (port, ctx, ws, f"pub-{port}-{ws}-{round_}", messages, mixed, ready, go, done)
    writer = spawn.Process(target=publisher, args=args)
    writer.start()
    ready.wait(60)
    cpu0, start = support.cpu_seconds(pid), time.monotonic()
    go.set()
    sizes = [len(m) for m in publishes(mixed)]
    expected = sum(sizes) * (messages // 1000) + sum(sizes[: messages % 1000])
    received, buffer = 0, bytearray()
    recv = sub.sock.recv
    while received < expected:
        data = recv(1 << 20)
        if not data:
            raise ConnectionError("the server closed the connection")
        if ws:
            buffer += data
            received += payload_bytes(buffer)
        else:
            received += len(data)
    elapsed, cpu = time.monotonic() - start, support.cpu_seconds(pid) - cpu0
    done.set()
    writer.join(60)
    sub.sock.close()
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
    parser.add_argument(
        "--mixed", action="store_true", help="payloads of 48 to 80 bytes rather than 64"
    )
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
                rate, per_cpu = relay(port, pid, ctx, ws, args.messages, r, args.mixed)
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
        f"\n{'48-80' if args.mixed else '64'}-byte QoS 0 messages, one per WebSocket message "
        "(TLS record), 1 publisher -> 1 "
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
    # The rounds of one sitting ran side by side (interleaved): the ratio of each round's pair
    # is steadier on a shared machine than the ratio of two medians.
    print("  relay per CPU-s, paired by round (median, lowest-highest):")
    for a, b in (("gw-wss", "gw-tls"), ("gw-wss", "mosquitto-ws")):
        pairs = [
            x / y
            for x, y in zip(
                results[a].get("relay per CPU-s", []),
                results[b].get("relay per CPU-s", []),
                strict=True,
            )
        ]
        if pairs:
            print(
                f"    {a}/{b}: {statistics.median(pairs):.2f} ({min(pairs):.2f}-{max(pairs):.2f})"
            )


if __name__ == "__main__":
    os.environ.setdefault("MQTTGW_TEST_LOG_CONNECT", "")
    main()
