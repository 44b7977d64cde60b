"""The authorization hook against a small real HTTP service and a real mosquitto: allow,
deny, a new user name for the broker, a slow answer (that device held, the others served),
garbage, a redirect and an oversized answer (refused by the failure policy), the cache, and
a hook that is down under both failure policies."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from gateway import testing as support
from gateway.demo import pki
from tests.integration.test_operations import http, metrics

pytestmark = pytest.mark.integration

ACCEPTED, REFUSED = b"\x20\x02\x00\x00", b"\x20\x02\x00\x05"


class Hook(BaseHTTPRequestHandler):
    """Answers by the client id's first word."""

    asked: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        question = json.loads(self.rfile.read(int(self.headers["content-length"])))
        Hook.asked.append(question)
        kind = question["clientid"].split("-")[0]
        if kind == "slow":
            time.sleep(1.5)
        if kind == "redirect":
            self.send_response(307)
            self.send_header("location", "/elsewhere")
            self.send_header("content-length", "0")
            self.end_headers()
            return
        body = {
            "allow": b'{"result": "allow"}',
            "slow": b'{"result": "allow"}',
            "rename": json.dumps(
                {"result": "allow", "username": f"tenant-a/{question['cert_common_name']}"}
            ).encode(),
            "deny": b'{"result": "deny"}',
            "garbage": b"<html>not json</html>",
            "big": b" " * (10 * 1024 * 1024),
        }[kind]
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass  # (the gateway hung up on an oversized answer)

    def log_message(self, *args: Any) -> None:
        pass


def connack(port: int, ctx: Any, client_id: str, level: int = 4) -> bytes:
    with support.tls_connect(port, ctx, timeout=15) as s:
        s.sendall(support.connect_packet(client_id, level=level))
        return support.read_exact(s, 4 if level == 4 else 5)


def test_the_hook_allows_denies_renames_and_fails_safely(
    pki_dir: support.Pki, workdir: str
) -> None:
    p = pki_dir
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/auth"
    broker, broker_port = support.start_mosquitto(workdir)
    hooked, down, admin = support.free_port(), support.free_port(), support.free_port()
    tenants = support.free_port()  # a listener without a hook, whose tenant x has one
    x_cert = pki.issue(p.inter, "x", server=True, names=("x.example",)).write(workdir, "x")
    dead = f"http://127.0.0.1:{support.free_port()}/auth"  # nothing listens there
    conf = (
        support.listener_conf(
            "h", hooked, broker_port, p, {"auth_http_url": url, "auth_http_timeout": "3s"}
        )
        + support.listener_conf(
            "a",
            down,
            broker_port,
            p,
            {
                "auth_http_url": dead,
                "auth_http_timeout": "1s",
                "auth_http_failure_policy": "accept",
            },
        )
        + support.listener_conf(
            "t",
            tenants,
            broker_port,
            p,
            {
                "tenant.x.server_names": "x.example",
                "tenant.x.certfile": x_cert[0],
                "tenant.x.keyfile": x_cert[1],
                "tenant.x.auth_http_url": url,
            },
        )
    )
    gw = support.start_gateway(workdir, conf + f"admin.listen = {admin}\n")
    ctx = support.client_context(p, p.client("hooked-device"))
    try:
        assert connack(hooked, ctx, "allow-1") == ACCEPTED
        question = Hook.asked[-1]
        assert question["cert_common_name"] == "hooked-device"
        assert len(question["cert_fingerprint"]) == 64 and question["listener"] == "h"
        assert question["peer_address"].startswith("127.0.0.1:")
        assert connack(hooked, ctx, "rename-1") == ACCEPTED
        support.wait_until(lambda: "u'tenant-a/hooked-device'" in broker.log(), 10)
        assert connack(hooked, ctx, "deny-1") == REFUSED
        assert connack(hooked, ctx, "deny-5", level=5)[:4] == b"\x20\x03\x00\x87"
        # A slow answer holds that device only.
        slow: list[bytes] = []
        waiting = threading.Thread(target=lambda: slow.append(connack(hooked, ctx, "slow-1")))
        waiting.start()
        time.sleep(0.3)
        start = time.monotonic()
        assert connack(hooked, ctx, "allow-2") == ACCEPTED
        assert time.monotonic() - start < 1.0
        waiting.join(10)
        assert slow == [ACCEPTED]
        # Whatever is not an answer: the failure policy (reject here).
        for client_id in ("garbage-1", "redirect-1", "big-1"):
            assert connack(hooked, ctx, client_id) == REFUSED, client_id
        # Answers are cached: allow-2 again is not asked about.
        assert connack(hooked, ctx, "allow-2") == ACCEPTED
        assert [q["clientid"] for q in Hook.asked].count("allow-2") == 1
        # A tenant's own hook: asked about its devices (told the tenant), not the others'.
        raw = socket.create_connection(("127.0.0.1", tenants), timeout=10)
        with ctx.wrap_socket(raw, server_hostname="x.example") as s:
            s.sendall(support.connect_packet("deny-x"))
            assert support.read_exact(s, 4) == REFUSED
        assert Hook.asked[-1]["clientid"] == "deny-x" and Hook.asked[-1]["tenant"] == "x"
        assert connack(tenants, ctx, "deny-bare") == ACCEPTED  # no name: the listener's
        assert "deny-bare" not in [q["clientid"] for q in Hook.asked]
        # A hook that is down: accept, by that listener's policy.
        assert connack(down, ctx, "allow-3") == ACCEPTED
        log = gw.log()
        assert "reason=auth_denied" in log and "reason=auth_unavailable" in log
        assert "auth_http a: no valid answer" in log
        for client_id in ("deny-1", "garbage-1", "redirect-1", "big-1"):
            assert f"as {client_id} " not in broker.log()  # never reached the broker
        scraped = metrics(admin)
        on = ("listener", "h")
        assert scraped[("mqttgw_auth_http_decisions_total", (("decision", "deny"), on))] == 2
        assert scraped[("mqttgw_auth_http_decisions_total", (("decision", "failed"), on))] == 3
        assert scraped[("mqttgw_auth_http_decisions_total", (("decision", "cached"), on))] == 1
        refused = ("mqttgw_connections_refused_total", (on, ("reason", "auth_unavailable")))
        assert scraped[refused] == 3
        hook = json.loads(http(admin, "/status")[2])["listeners"][0]["auth_http"]
        own = json.loads(http(admin, "/status")[2])["listeners"][2]["tenants"][0]
        assert own["auth_http_url"] == url and own["refused"] == {"auth_denied": 1}
        assert hook["url"] == url and hook["answers"]["allow"] == 4 and hook["cached"] >= 4
    finally:
        gw.stop()
        broker.stop()
        server.shutdown()
