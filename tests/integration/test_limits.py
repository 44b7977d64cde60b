"""Connection-rate limits against the running gateway: a flood from one address is cut to
the configured rate before any TLS work, while another address still connects."""

from __future__ import annotations

import select
import socket
import time

import pytest

from gateway import testing as support

pytestmark = pytest.mark.integration

ACCEPTED = b"\x20\x02\x00\x00"


def _attempt(port: int, source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    return sock


def _admitted(socks: list[socket.socket]) -> int:
    """Refused before TLS: the gateway closed the connection (readable: EOF). Admitted: the
    gateway waits for our ClientHello, so nothing is readable (handshake_timeout is 15s)."""
    time.sleep(0.5)
    closed = set()
    for chunk in range(0, len(socks), 200):
        part = socks[chunk : chunk + 200]
        readable, _, _ = select.select(part, [], [], 0)
        closed.update(id(s) for s in readable)
    return sum(id(s) not in closed for s in socks)


def test_flood_from_one_address_is_cut_to_the_rate(broker: int, workdir: str) -> None:
    p = support.make_pki(workdir)
    port = support.free_port()
    conf = support.listener_conf("lim", port, broker, p, {"max_conn_rate_per_ip": "20"})
    gw = support.start_gateway(workdir, conf)
    flood: list[socket.socket] = []
    try:
        support.wait_until(lambda: support.port_open(port))
        time.sleep(1.1)  # the probe above took a token; let the bucket fill again
        # 200 connections per second from 127.0.0.1 for 2 seconds (bounded: 400 attempts),
        # and meanwhile real MQTT clients from 127.0.0.2.
        ctx = support.client_context(p, p.client("bystander"))
        bystanders = []
        start = time.monotonic()
        for i in range(400):
            flood.append(_attempt(port, "127.0.0.1"))
            if i % 80 == 40:
                raw = _attempt(port, "127.0.0.2")
                with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(support.connect_packet(f"bystander-{i}"))
                    bystanders.append(support.read_exact(tls, 4))
            delay = start + (i + 1) / 200 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        elapsed = time.monotonic() - start
        admitted = _admitted(flood)
        # A bucket of one second's worth (20) plus 20 per second of the flood.
        expected = 20 + 20 * elapsed
        assert expected - 6 <= admitted <= expected + 6, (admitted, elapsed)
        assert bystanders == [ACCEPTED] * 5
        log = gw.log()
        individual = log.count("reason=rate_limited_per_ip: address above max_conn_rate_per_ip")
        assert individual == 10, log[-3000:]  # then the rest is summarised
        for s in flood:
            s.close()
        flood.clear()
        support.wait_until(lambda: "more connections refused before TLS" in gw.log(), 15)
        summary = next(x for x in gw.log().splitlines() if "more connections refused" in x)
        assert "(rate_limited_per_ip=" in summary and "most: 127.0.0.1 (" in summary, summary
        assert "127.0.0.2" not in summary
    finally:
        for s in flood:
            s.close()
        gw.stop()


class _Subscriber:
    """On the broker's plain listener: when each message on ``paced/#`` arrived."""

    def __init__(self, port: int) -> None:
        import threading

        from gateway.mqtt.packets import encode_length

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(support.connect_packet("paced-subscriber", keep_alive=0))
        assert support.read_exact(self.sock, 4) == ACCEPTED
        topic = b"paced/#"
        body = b"\x00\x01" + len(topic).to_bytes(2, "big") + topic + b"\x00"
        self.sock.sendall(b"\x82" + encode_length(len(body)) + body)
        assert support.read_exact(self.sock, 5)[0] == 0x90
        self.got: list[tuple[float, str]] = []
        self.sock.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        buf = b""
        while self.running:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return
            buf += data
            while len(buf) >= 2 and len(buf) >= 2 + buf[1]:  # short packets only here
                packet, buf = buf[: 2 + buf[1]], buf[2 + buf[1] :]
                size = int.from_bytes(packet[2:4], "big")
                self.got.append((time.monotonic(), packet[4 + size :].decode()))

    def stop(self) -> None:
        self.running = False
        self.thread.join(2)
        self.sock.close()


def _publish(topic: str, payload: str) -> bytes:
    t, p = topic.encode(), payload.encode()
    body = len(t).to_bytes(2, "big") + t + p
    return bytes([0x30, len(body)]) + body


def test_a_device_over_its_message_rate_is_paced_and_loses_nothing(
    workdir: str,
) -> None:
    """messages_rate = 20/s: 60 PUBLISHes written at once reach the broker at 20 a second
    (counted at a subscriber on the broker), none lost, in order; meanwhile another
    device's message goes through at once."""
    p = support.make_pki(workdir)
    broker, plain = support.start_mosquitto(workdir)
    port = support.free_port()
    admin = support.free_port()
    conf = support.listener_conf("paced", port, plain, p) + "messages_rate = 20/s\n"
    conf += f"admin.listen = 127.0.0.1:{admin}\n"
    gw = support.start_gateway(workdir, conf, "gw-paced")
    sub = _Subscriber(plain)
    try:
        flood = support.tls_connect(port, support.client_context(p, p.client("flooder")))
        flood.sendall(support.connect_packet("flooder", keep_alive=0))
        assert support.read_exact(flood, 4) == ACCEPTED
        other = support.tls_connect(port, support.client_context(p, p.client("neighbour")))
        other.sendall(support.connect_packet("neighbour", keep_alive=0))
        assert support.read_exact(other, 4) == ACCEPTED
        start = time.monotonic()
        flood.sendall(b"".join(_publish("paced/flood", f"{n:03d}") for n in range(60)))
        time.sleep(1.0)
        sent_at = time.monotonic()
        other.sendall(_publish("paced/other", "hello"))
        support.wait_until(lambda: len(sub.got) >= 61, 10, what="all messages")
        flood_times = [t for t, m in sub.got if m != "hello"]
        assert [m for _, m in sub.got if m != "hello"] == [f"{n:03d}" for n in range(60)]
        (hello_at,) = [t for t, m in sub.got if m == "hello"]
        assert hello_at - sent_at < 0.5  # not behind the flooder's queue
        span = flood_times[-1] - start
        assert 59 / 20 * 0.9 <= span <= 59 / 20 * 1.5, span  # paced to 20/s
        for second in range(1, int(span)):  # after the first, never above the rate
            count = sum(second <= t - start < second + 1 for t in flood_times)
            assert count <= 21, (second, count)
        from tests.integration.test_operations import metrics

        scraped = metrics(admin)
        assert scraped[("mqttgw_throttled_total", (("listener", "paced"),))] >= 50
        assert scraped[("mqttgw_throttled_seconds_total", (("listener", "paced"),))] > 2
        flood.close()
        other.close()
    finally:
        sub.stop()
        gw.stop()
        broker.stop()
