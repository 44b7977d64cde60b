"""Flow control: 64 MiB through a stalled reader keeps the gateway's memory bounded."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import pytest

from gateway import testing as support

pytestmark = pytest.mark.integration

TOTAL = 64 * 1024 * 1024
CHUNK = 64 * 1024
MAX_GROWTH_KIB = 16 * 1024  # the gateway may hold buffers, never the stream


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> support.Pki:
    return support.make_pki(str(tmp_path_factory.mktemp("pki")))


def _payloads(seed: bytes) -> list[bytes]:
    block = hashlib.sha256(seed).digest() * (CHUNK // 32)
    return [i.to_bytes(4, "big") + block[4:] for i in range(TOTAL // CHUNK)]


def _read_publishes(sock: socket.socket, count: int, deadline: float) -> hashlib._Hash:
    """Read QoS 0 PUBLISH packets, hash their payloads."""
    digest = hashlib.sha256()
    buf = bytearray()
    seen = 0
    while seen < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {seen} of {count} messages arrived")
        data = sock.recv(1 << 20)
        if not data:
            raise ConnectionError(f"closed after {seen} messages")
        buf += data
        while True:
            if len(buf) < 2:
                break
            length, pos, shift = 0, 1, 0
            while True:
                if pos >= len(buf):
                    length = -1
                    break
                byte = buf[pos]
                length |= (byte & 0x7F) << shift
                pos += 1
                shift += 7
                if not byte & 0x80:
                    break
            if length < 0 or len(buf) < pos + length:
                break
            packet_type = buf[0] >> 4
            body = bytes(buf[pos : pos + length])
            del buf[: pos + length]
            if packet_type == 3:
                topic_len = int.from_bytes(body[:2], "big")
                digest.update(body[2 + topic_len :])
                seen += 1
    return digest


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = support.rss_kib(pid)
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            self.peak = max(self.peak, support.rss_kib(self.pid))
            time.sleep(0.02)


def _warm_up(port: int, p: support.Pki) -> None:
    # One full connection first, so lazily imported code and pools are in the baseline.
    with support.tls_connect(port, support.client_context(p, p.client("warm"))) as s:
        s.sendall(support.connect_packet("warm"))
        support.read_exact(s, 4)


IO = pytest.mark.parametrize("io", ["transport"])  # tls_io: the TLS path (one now)


@IO
def test_stalled_subscriber(p: support.Pki, workdir: str, io: str) -> None:
    """Broker -> stalled subscriber: memory stays bounded; once it reads, every byte arrives."""
    broker, broker_port = support.start_mosquitto(workdir)
    port = support.free_port()
    conf = support.listener_conf("x", port, broker_port, p, {"tls_io": io})
    gateway = support.start_gateway(workdir, conf)
    try:
        _warm_up(port, p)
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        raw.settimeout(30)
        raw.connect(("127.0.0.1", port))
        sub = support.client_context(p, p.client("stalled")).wrap_socket(
            raw, server_hostname="localhost"
        )
        sub.sendall(support.connect_packet("stalled-sub"))
        assert support.read_exact(sub, 4) == b"\x20\x02\x00\x00"
        sub.sendall(b"\x82\x08\x00\x01\x00\x03big\x00")  # SUBSCRIBE id 1, 'big', QoS 0
        assert support.read_exact(sub, 5) == b"\x90\x03\x00\x01\x00"
        baseline = support.rss_kib(gateway.pid)
        sampler = RssSampler(gateway.pid)
        sampler.start()

        payloads = _payloads(b"down")
        expected = hashlib.sha256(b"".join(payloads)).hexdigest()
        with socket.create_connection(("127.0.0.1", broker_port), timeout=30) as pub:
            pub.sendall(support.connect_packet("publisher"))
            assert support.read_exact(pub, 4) == b"\x20\x02\x00\x00"
            for payload in payloads:
                pub.sendall(support.publish_packet("big", payload))
            pub.sendall(b"\xe0\x00")
        time.sleep(1.0)  # the stall lasts: the gateway must not drain the broker into memory
        sampler.stop_flag.set()
        sampler.join()
        growth = sampler.peak - baseline
        assert growth < MAX_GROWTH_KIB, f"gateway grew by {growth} KiB while the subscriber stalled"

        digest = _read_publishes(sub, len(payloads), time.monotonic() + 60)
        assert digest.hexdigest() == expected
        sub.close()
    finally:
        gateway.stop()
        broker.stop()


@IO
def test_stalled_broker(p: support.Pki, workdir: str, io: str) -> None:
    """Device -> stalled broker: memory stays bounded; once the broker reads, every byte arrives."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    upstream_port = server.getsockname()[1]
    port = support.free_port()
    conf = support.listener_conf("x", port, upstream_port, p, {"tls_io": io})
    gateway = support.start_gateway(workdir, conf)
    try:
        sender_done = threading.Event()
        payloads = _payloads(b"up")
        stream = b"".join(support.publish_packet("up", payload) for payload in payloads)
        connect = support.connect_packet("pusher")
        errors: list[BaseException] = []

        def push() -> None:
            try:
                with support.tls_connect(
                    port, support.client_context(p, p.client("pusher")), timeout=60
                ) as s:
                    s.sendall(connect)
                    for i in range(0, len(stream), CHUNK):
                        s.sendall(stream[i : i + CHUNK])
                    sender_done.set()
                    time.sleep(2)
            except BaseException as e:  # reported by the main thread
                errors.append(e)
                sender_done.set()

        baseline = support.rss_kib(gateway.pid)
        pusher = threading.Thread(target=push, daemon=True)
        pusher.start()
        server.settimeout(10)
        conn, _ = server.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        sampler = RssSampler(gateway.pid)
        sampler.start()
        time.sleep(2.0)  # the broker reads nothing meanwhile
        assert not sender_done.is_set(), "the device pushed 64 MiB into a stalled broker"
        sampler.stop_flag.set()
        sampler.join()
        growth = sampler.peak - baseline
        assert growth < MAX_GROWTH_KIB, f"gateway grew by {growth} KiB while the broker stalled"

        received = hashlib.sha256()
        expected_len = len(connect) + len(stream)
        got = 0
        conn.settimeout(30)
        while got < expected_len:
            data = conn.recv(1 << 20)
            assert data, f"closed after {got} of {expected_len} bytes"
            received.update(data)
            got += len(data)
        assert received.hexdigest() == hashlib.sha256(connect + stream).hexdigest()
        assert sender_done.wait(30) and not errors, errors
        conn.close()
        pusher.join(10)
    finally:
        server.close()
        gateway.stop()


@IO
def test_gateway_process_keeps_serving_after_abuse(p: support.Pki, workdir: str, io: str) -> None:
    """Garbage from many peers is refused one by one; a good client still gets through."""
    broker, broker_port = support.start_mosquitto(workdir)
    port = support.free_port()
    conf = support.listener_conf("x", port, broker_port, p, {"tls_io": io})
    gateway = support.start_gateway(workdir, conf)
    try:
        for junk in (b"\x16\x03\x01\x00\x05hello", os.urandom(4096), b"\x00" * 10):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(junk)
                try:
                    s.recv(100)
                except ConnectionResetError:
                    pass
        with support.tls_connect(port, support.client_context(p, p.client("after"))) as s:
            s.sendall(support.connect_packet("after-abuse"))
            assert support.read_exact(s, 4) == b"\x20\x02\x00\x00"
        assert "reason=tls_error" in gateway.log()
        assert "Traceback" not in gateway.log()
    finally:
        gateway.stop()
        broker.stop()
