"""A soak: the gateway with workers under a changing fleet for a bounded time.

    python bench/soak.py                 # 30 minutes
    python bench/soak.py --minutes 6 --reload-every 120

Devices (each its own certificate, from 16 source addresses 127.0.0.10-25) connect,
publish QoS 1 messages and wait for each PUBACK, reconnect offering their TLS session
(resumption), and now and then drop the connection abruptly (a TCP reset, no DISCONNECT).
A subscriber on the broker itself records every message delivered. Meanwhile: the devices
CA revokes one device every ``--revoke-every`` seconds (``openssl ca -revoke``, a new CRL
on the local CA endpoint, fetched by the gateway), the gateway reloads (SIGHUP) every
``--reload-every`` seconds, and one worker is killed (SIGKILL) half-way.

At the end it checks and reports:
- RSS and open descriptors of the master and its workers, at the end against their level
  after the warm-up, with as many devices (each revoked one replaced by a new one):
  within 5 %;
- every QoS 1 message a device generated reached the subscriber (a device resends what
  was not acknowledged when its connection dropped, as MQTT 3.1.1 says; a revoked device's
  unacknowledged messages are not counted);
- every revoked device is refused, and none was admitted after its revocation was in
  force plus one refresh interval;
- no traceback in the gateway's log.
Exit status 1 if a check fails. Bounded: every loop stops at the deadline.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import ssl
import sys
import threading
import time
from typing import Any

from harness import NO_LIMITS, raise_fd_limit

from gateway import testing as support
from gateway.mqtt.packets import encode_length
from gateway.testing.crl import CrlHttpServer, OpensslCA

PUBACK = 0x40
CONNACK_OK = b"\x20\x02\x00\x00"
REFRESH = 5.0  # the gateway's CRL refresh interval in this run (seconds)


def publish_qos1(topic: str, packet_id: int, payload: bytes) -> bytes:
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + packet_id.to_bytes(2, "big") + payload
    return b"\x32" + encode_length(len(body)) + body


def read_packet(sock: ssl.SSLSocket) -> tuple[int, bytes]:
    head = support.read_exact(sock, 2)
    if len(head) < 2:
        raise ConnectionError("closed")
    length, shift, byte = 0, 0, head[1]
    length = byte & 0x7F
    while byte & 0x80:
        shift += 7
        nxt = support.read_exact(sock, 1)
        if not nxt:
            raise ConnectionError("closed")
        byte = nxt[0]
        length |= (byte & 0x7F) << shift
    return head[0], support.read_exact(sock, length)


class Device(threading.Thread):
    def __init__(self, soak: Soak, index: int) -> None:
        super().__init__(daemon=True)
        self.soak = soak
        self.index = index
        self.name = f"soak-{index}"
        self.cert = soak.pki.client(self.name)
        self.source = f"127.0.0.{10 + index % 16}"
        self.ctx = support.client_context(soak.pki, self.cert, "1.2" if index % 2 else "1.3")
        self.session: Any = None
        self.seq = 0
        self.pending: list[int] = []  # generated, not yet acknowledged
        self.acked: set[int] = set()
        self.revoked_at: float | None = None  # when the CA revoked it
        self.admitted_after_revocation = 0
        self.refused = 0
        self.connections = 0
        self.resumed = 0
        self.connected = False
        self.rng = random.Random(index)

    def run(self) -> None:
        while time.monotonic() < self.soak.deadline:
            try:
                self._one_connection()
            except (OSError, ssl.SSLError, ConnectionError, EOFError):
                pass
            self.connected = False
            time.sleep(self.rng.uniform(0.2, 1.5))

    def _one_connection(self) -> None:
        raw = socket.create_connection(
            ("127.0.0.1", self.soak.port), timeout=10, source_address=(self.source, 0)
        )
        try:
            sock = self.ctx.wrap_socket(raw, server_hostname="localhost", session=self.session)
        except (ssl.SSLError, OSError):
            self.refused += 1
            raw.close()
            raise
        with sock:
            sock.sendall(support.connect_packet(self.name, keep_alive=30))
            if support.read_exact(sock, 4) != CONNACK_OK:
                self.refused += 1
                return
            if self.revoked_at is not None and time.monotonic() > self.revoked_at + 3 * REFRESH:
                self.admitted_after_revocation += 1
            self.connections += 1
            self.resumed += sock.session_reused
            self.session = sock.session
            self.connected = True
            for seq in list(self.pending):  # resend what was never acknowledged (DUP)
                self._publish(sock, seq)
            messages = self.rng.randint(3, 12)
            for _ in range(messages):
                if time.monotonic() > self.soak.deadline:
                    break
                self.seq += 1
                self.pending.append(self.seq)
                self._publish(sock, self.seq)
                time.sleep(self.rng.uniform(0.05, 0.4))
            if self.rng.random() < 0.3:  # abrupt: a reset, no DISCONNECT
                linger = (1).to_bytes(4, sys.byteorder) + (0).to_bytes(4, sys.byteorder)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                return
            sock.sendall(b"\xe0\x00")

    def _publish(self, sock: ssl.SSLSocket, seq: int) -> None:
        packet_id = seq % 65535 + 1
        sock.sendall(publish_qos1(f"soak/{self.name}", packet_id, f"{self.name}:{seq}".encode()))
        kind, body = read_packet(sock)
        if kind & 0xF0 == PUBACK and int.from_bytes(body[:2], "big") == packet_id:
            self.pending.remove(seq)
            self.acked.add(seq)


class Subscriber(threading.Thread):
    """On the broker's plain listener: every soak message delivered, by device."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.got: dict[str, set[int]] = {}
        self.ready = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.sendall(support.connect_packet("soak-subscriber", keep_alive=0))
        assert support.read_exact(sock, 4) == CONNACK_OK
        topic = b"soak/#"
        body = b"\x00\x01" + len(topic).to_bytes(2, "big") + topic + b"\x01"
        sock.sendall(b"\x82" + encode_length(len(body)) + body)
        sock.settimeout(0.5)
        buf = b""
        while not self.stop.is_set():
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                break
            buf += data
            while len(buf) >= 2:
                length, shift, pos = 0, 0, 1
                while pos < len(buf):
                    byte = buf[pos]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    pos += 1
                    if not byte & 0x80:
                        break
                else:
                    break
                if len(buf) < pos + length:
                    break
                first, packet = buf[0], buf[pos : pos + length]
                buf = buf[pos + length :]
                if first & 0xF0 == 0x90:
                    self.ready.set()
                elif first & 0xF0 == 0x30:
                    tlen = int.from_bytes(packet[:2], "big")
                    rest = packet[2 + tlen :]
                    if first & 0x06:  # QoS 1: acknowledge
                        sock.sendall(b"\x40\x02" + rest[:2])
                        rest = rest[2:]
                    name, _, seq = rest.decode().partition(":")
                    self.got.setdefault(name, set()).add(int(seq))
        sock.close()


def process_tree(master: int) -> list[int]:
    """The master and its workers (not the short-lived CRL worker processes)."""
    out = [master]
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if ppid == master and b"gateway.workers.child" in cmd:
            out.append(int(name))
    return out


def whole_log(path: str) -> str:
    """The log with the segments twistd rotated away (NAME.log.1, .2, ...), oldest first."""
    import glob

    rotated = sorted(glob.glob(path + ".*[0-9]"), key=lambda p: -int(p.rsplit(".", 1)[1]))
    text = ""
    for part in [*rotated, path]:
        with open(part, encoding="utf-8", errors="replace") as f:
            text += f.read()
    return text


def usage(master: int) -> tuple[int, int]:
    """(RSS KiB, open descriptors) of the master and its workers."""
    rss = fds = 0
    for pid in process_tree(master):
        try:
            rss += support.rss_kib(pid)
            fds += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return rss, fds


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        raise_fd_limit()
        import tempfile

        self.args = args
        self.dir = tempfile.mkdtemp(prefix="mqttgw-soak-")
        self.pki = support.make_pki(self.dir, args.key)
        self.ca = OpensslCA.create(os.path.join(self.dir, "devices-ca"), self.pki.inter)
        self.root = OpensslCA.create(os.path.join(self.dir, "root-ca"), self.pki.root)
        self.http = CrlHttpServer()
        self.publish_crls()
        self.port = support.free_port()
        self.deadline = 0.0

    def publish_crls(self) -> None:
        for name, ca in (("devices", self.ca), ("root", self.root)):
            path = os.path.join(self.dir, f"{name}.crl.pem")
            data = ca.gencrl()
            with open(path + ".tmp", "wb") as f:
                f.write(data)
            os.replace(path + ".tmp", path)
            self.http.serve_file(f"/{name}.crl", path)

    def conf(self, broker_port: int) -> str:
        urls = f"{self.http.url('/devices.crl')},{self.http.url('/root.crl')}"
        conf = support.listener_conf(
            "soak",
            self.port,
            broker_port,
            self.pki,
            {"enable_crl_cache": "true", "crl_cache_urls": urls},
        )
        return (
            conf
            + NO_LIMITS
            + (
                f"workers = {self.args.workers}\n"
                f"crl_cache.refresh_interval = {int(REFRESH)}s\n"
                f"crl_cache.dir = {os.path.join(self.dir, 'crl-cache')}\n"
                "stats_log_interval = 1m\n"
            )
        )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--devices", type=int, default=48)
    parser.add_argument("--workers", default="2")
    parser.add_argument("--revoke-every", type=float, default=60)
    parser.add_argument("--reload-every", type=float, default=300)
    parser.add_argument("--warm-up", type=float, default=None, help="seconds (default: a tenth)")
    parser.add_argument("--key", choices=("ec", "rsa"), default="ec")
    args = parser.parse_args()
    duration = args.minutes * 60
    warm_up = args.warm_up if args.warm_up is not None else min(120.0, duration / 10)
    soak = Soak(args)
    broker, broker_port = support.start_mosquitto(soak.dir)
    subscriber = Subscriber(broker_port)
    subscriber.start()
    subscriber.ready.wait(10)
    gw = support.start_gateway(soak.dir, soak.conf(broker_port), "soak", "serving")
    failures: list[str] = []
    try:
        support.wait_until(lambda: gw.log().count(") serving") >= 2, 60, what="workers")
        start = time.monotonic()
        soak.deadline = start + duration
        devices = [Device(soak, i) for i in range(args.devices)]
        for d in devices:
            d.start()
        next_revoke = start + args.revoke_every
        next_reload = start + args.reload_every
        killed = False
        warm: tuple[int, int] | None = None
        revoked: list[Device] = []
        print(f"soak: {args.devices} devices for {args.minutes:g} min; gateway log {gw.log_path}")
        while time.monotonic() < soak.deadline - 15:
            now = time.monotonic()
            if warm is None and now > start + warm_up:
                warm = usage(gw.pid)
                print(f"  after warm-up: RSS {warm[0]} KiB, {warm[1]} descriptors")
            if now >= next_revoke:
                victim = next(d for d in devices if d.revoked_at is None)
                soak.ca.revoke(victim.cert[0])
                soak.publish_crls()
                victim.revoked_at = time.monotonic()
                revoked.append(victim)
                # A new device takes its place: the fleet keeps its size, so the end is
                # measured under the same load as the warm-up.
                newcomer = Device(soak, len(devices))
                devices.append(newcomer)
                newcomer.start()
                next_revoke += args.revoke_every
                print(f"  {now - start:6.0f}s revoked {victim.name}")
            if now >= next_reload:
                gw.proc.send_signal(signal.SIGHUP)
                next_reload += args.reload_every
                print(f"  {now - start:6.0f}s reload (SIGHUP)")
            if not killed and now > start + duration / 2:
                workers = process_tree(gw.pid)[1:]
                if workers:
                    os.kill(workers[0], signal.SIGKILL)
                    print(f"  {now - start:6.0f}s killed worker pid {workers[0]}")
                killed = True
            time.sleep(0.5)
        # The end, with the same fleet connected as at the warm-up.
        end = usage(gw.pid)
        for d in list(devices):
            d.join(timeout=30)
        time.sleep(3)  # the last deliveries
        subscriber.stop.set()
        subscriber.join(5)
        print(f"  at the end:    RSS {end[0]} KiB, {end[1]} descriptors")
        if warm is not None:
            for what, before, after in (("RSS", warm[0], end[0]), ("descriptors", warm[1], end[1])):
                ratio = after / before if before else float("nan")
                print(f"  {what}: end / after warm-up = {ratio:.3f}")
                if ratio > 1.05:
                    failures.append(f"{what} grew {ratio:.3f}x between the warm-up and the end")
        generated = lost = 0
        for d in devices:
            got = subscriber.got.get(d.name, set())
            wanted = set(d.acked) | (set() if d.revoked_at is not None else set(d.pending))
            generated += len(wanted)
            missing = wanted - got
            lost += len(missing)
            if missing:
                failures.append(f"{d.name}: {len(missing)} QoS 1 message(s) never delivered")
        print(
            f"  QoS 1 messages: {generated} generated, {lost} lost; connections "
            f"{sum(d.connections for d in devices)}, resumed {sum(d.resumed for d in devices)}, "
            f"refused {sum(d.refused for d in devices)}"
        )
        for victim in revoked:
            try:
                with support.tls_connect(soak.port, victim.ctx) as s:
                    s.sendall(support.connect_packet("after", keep_alive=0))
                    admitted = support.read_exact(s, 4) == CONNACK_OK
            except (OSError, ssl.SSLError, ConnectionError):
                admitted = False
            if admitted or victim.admitted_after_revocation:
                failures.append(f"{victim.name} was admitted after its revocation")
        refused_all = not any("revocation" in f for f in failures)
        print(f"  revoked devices: {len(revoked)}, all refused: {refused_all}")
        log = whole_log(gw.log_path)
        tracebacks = log.count("Traceback")
        print(f"  tracebacks in the log: {tracebacks}")
        if tracebacks:
            failures.append(f"{tracebacks} traceback(s) in the log")
        reloads = log.count("reload applied")
        restarts = log.count("restarting it in")
        print(f"  reloads applied: {reloads}; worker restarts: {restarts}")
    finally:
        gw.stop()
        broker.stop()
        soak.http.stop()
    for f in failures:
        print(f"FAIL: {f}")
    print("soak: " + ("FAILED" if failures else "passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
