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
