"""The broker side with real brokers and clients: a pool of mosquittos, TLS to a mosquitto
that requires a client certificate, the certificate's identity seen by mosquitto's ACLs,
PROXY headers read by an independent parser (the proxy-protocol package) and sent by HAProxy
in front of the gateway."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections import Counter

import paho.mqtt.client as paho
import pytest

from gateway import testing as support
from gateway.demo import pki
from gateway.proxy.pool import BrokerPool

pytestmark = pytest.mark.integration

ACCEPTED = b"\x20\x02\x00\x00"


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> support.Pki:
    return support.make_pki(str(tmp_path_factory.mktemp("pki")))


def connect(
    port: int, p: support.Pki, cert: tuple[str, str], client_id: str, level: int = 4
) -> bytes:
    with support.tls_connect(port, support.client_context(p, cert)) as s:
        s.sendall(support.connect_packet(client_id, level=level))
        return support.read_exact(s, 5 if level == 5 else 4)


def hold(port: int, p: support.Pki, cert: tuple[str, str], client_id: str) -> ssl.SSLSocket:
    s = support.tls_connect(port, support.client_context(p, cert))
    s.sendall(support.connect_packet(client_id))
    assert support.read_exact(s, 4) == ACCEPTED
    return s


def broker_of(brokers: list[tuple[support.Process, int]], client_id: str) -> int:
    """Which mosquitto saw ``client_id`` connect (from its own log)."""
    seen = [i for i, (b, _) in enumerate(brokers) if f" as {client_id} " in b.log()]
    assert len(seen) == 1, (client_id, seen)
    return seen[0]


def wait_seen(brokers: list[tuple[support.Process, int]], client_id: str) -> int:
    support.wait_until(
        lambda: any(f" as {client_id} " in b.log() for b, _ in brokers), what=client_id
    )
    return broker_of(brokers, client_id)


def test_pool_balances_fails_over_and_hashes(p: support.Pki, workdir: str) -> None:
    brokers = [support.start_mosquitto(workdir) for _ in range(4)]
    cert = p.client("pooled")
    try:
        pool = ", ".join(f"127.0.0.1:{port}" for _, port in brokers[:3])
        ports = {name: support.free_port() for name in ("lc", "rr", "cid", "cid4")}
        conf = ""
        for name, balance in (("lc", "least_conn"), ("rr", "round_robin"), ("cid", "client_id")):
            conf += support.listener_conf(
                name,
                ports[name],
                brokers[0][1],
                p,
                {"upstream": pool, "upstream_balance": balance, "upstream_check_interval": "1s"},
            )
        pool4 = pool + f", 127.0.0.1:{brokers[3][1]}"
        conf += support.listener_conf(
            "cid4",
            ports["cid4"],
            brokers[0][1],
            p,
            {"upstream": pool4, "upstream_balance": "client_id"},
        )
        gw = support.start_gateway(workdir, conf)
        try:
            # least_conn: 30 clients that stay connected spread 10 / 10 / 10.
            held = [hold(ports["lc"], p, cert, f"lc-{i}") for i in range(30)]
            assert Counter(wait_seen(brokers, f"lc-{i}") for i in range(30)) == {
                0: 10,
                1: 10,
                2: 10,
            }
            for s in held:
                s.close()
            # round_robin: 30 short connections spread 10 / 10 / 10.
            for i in range(30):
                assert connect(ports["rr"], p, cert, f"rr-{i}") == ACCEPTED
            assert Counter(wait_seen(brokers, f"rr-{i}") for i in range(30)) == {
                0: 10,
                1: 10,
                2: 10,
            }
            # client_id: the same client id reaches the same broker, again and again.
            homes = {}
            for i in range(30):
                assert connect(ports["cid"], p, cert, f"sticky-{i}") == ACCEPTED
                homes[i] = wait_seen(brokers, f"sticky-{i}")
            for b, _ in brokers:
                open(b.log_path, "w").close()
            for i in range(30):
                assert connect(ports["cid"], p, cert, f"sticky-{i}") == ACCEPTED
                assert wait_seen(brokers, f"sticky-{i}") == homes[i]
            # A fourth broker: the client ids that move all move to it, and each lands where
            # rendezvous hashing of these brokers' addresses puts it. (The addresses are free
            # ports, new each run: how many move varies, about a quarter; the unit test
            # checks that share on fixed addresses.)
            three = BrokerPool(tuple(("127.0.0.1", port) for _, port in brokers[:3]), "client_id")
            four = BrokerPool(tuple(("127.0.0.1", port) for _, port in brokers), "client_id")
            for b, _ in brokers:
                open(b.log_path, "w").close()
            for i in range(30):
                assert homes[i] == three.candidates(f"sticky-{i}", 0.0)[0].index
                assert connect(ports["cid4"], p, cert, f"sticky-{i}") == ACCEPTED
                now = wait_seen(brokers, f"sticky-{i}")
                assert now == four.candidates(f"sticky-{i}", 0.0)[0].index
                assert now in (homes[i], 3)  # stays, or moves to the new broker
            # A broker killed: marked down, new clients reach the others.
            brokers[1][0].stop()
            for i in range(6):
                assert connect(ports["rr"], p, cert, f"after-kill-{i}") == ACCEPTED
            support.wait_until(lambda: "is DOWN" in gw.log())
            assert re.search(r"upstream rr broker 127\.0\.0\.1:\d+ is DOWN: ", gw.log())
            # Every broker of the pool down: CONNACK 0x03 (3.1.1) / 0x88 (5).
            brokers[0][0].stop()
            brokers[2][0].stop()
            assert connect(ports["lc"], p, cert, "nobody-home") == b"\x20\x02\x00\x03"
            assert (
                connect(ports["lc"], p, cert, "nobody-home-5", level=5)[:4] == b"\x20\x03\x00\x88"
            )
        finally:
            gw.stop()
    finally:
        for b, _ in brokers:
            b.stop()


def _tls_broker(
    workdir: str, p: support.Pki, name: str = "localhost"
) -> tuple[support.Process, int, str]:
    """mosquitto with its own TLS listener that requires a client certificate."""
    broker_ca = pki.make_ca("broker CA")
    cert, key = pki.issue(broker_ca, name, server=True).write(workdir, f"broker-{name}")
    ca_file = pki.write_ca_bundle(os.path.join(workdir, "broker-ca.pem"), broker_ca)
    client_ca = pki.write_ca_bundle(os.path.join(workdir, "gw-client-ca.pem"), p.root, p.inter)
    port = support.free_port()
    process, _ = support.start_mosquitto(
        workdir,
        extra=(
            f"listener {port} 127.0.0.1\ncafile {client_ca}\ncertfile {cert}\nkeyfile {key}\n"
            "require_certificate true\n"
        ),
    )
    return process, port, ca_file


def test_tls_to_the_broker(p: support.Pki, workdir: str) -> None:
    broker, tls_port, broker_ca = _tls_broker(workdir, p)
    gw_cert = p.client("gateway-as-client")
    try:
        good, wrong_name, untrusted = (support.free_port() for _ in range(3))
        base = {
            "upstream": f"127.0.0.1:{tls_port}",
            "upstream_tls": "true",
            "upstream_cacertfile": broker_ca,
            "upstream_certfile": gw_cert[0],
            "upstream_keyfile": gw_cert[1],
        }
        conf = support.listener_conf(
            "good", good, 1, p, dict(base, upstream_server_name="localhost")
        )
        conf += support.listener_conf(
            "wrongname", wrong_name, 1, p, dict(base, upstream_server_name="broker.example")
        )
        conf += support.listener_conf(
            "untrusted",
            untrusted,
            1,
            p,
            dict(base, upstream_cacertfile=p.ca_file, upstream_server_name="localhost"),
        )
        gw = support.start_gateway(workdir, conf)
        try:
            cert = p.client("tls-device")
            assert connect(good, p, cert, "over-tls") == ACCEPTED
            # Relayed both ways through the TLS upstream: a PINGREQ gets its PINGRESP.
            with support.tls_connect(good, support.client_context(p, cert)) as s:
                s.sendall(support.connect_packet("pinger") + b"\xc0\x00")
                assert support.read_exact(s, 6) == ACCEPTED + b"\xd0\x00"
            assert connect(wrong_name, p, cert, "wrong-name") == b"\x20\x02\x00\x03"
            assert connect(untrusted, p, cert, "untrusted") == b"\x20\x02\x00\x03"
            log = gw.log()
            assert "the certificate does not name broker.example" in log
            assert re.search(
                r"refused untrusted .*reason=upstream_unavailable.*TLS error: "
                r".*certificate verify failed",
                log,
            ), log[-3000:]
        finally:
            gw.stop()
    finally:
        broker.stop()


def test_broker_sessions_are_resumed(p: support.Pki, workdir: str) -> None:
    """A reconnect storm through a TLS upstream resumes the gateway's broker sessions."""
    broker, tls_port, broker_ca = _tls_broker(workdir, p)
    gw_cert = p.client("gateway-as-client-2")
    port, admin = support.free_port(), support.free_port()
    conf = (
        support.listener_conf(
            "r",
            port,
            1,
            p,
            {
                "upstream": f"127.0.0.1:{tls_port}",
                "upstream_tls": "true",
                "upstream_cacertfile": broker_ca,
                "upstream_server_name": "localhost",
                "upstream_certfile": gw_cert[0],
                "upstream_keyfile": gw_cert[1],
            },
        )
        + f"max_conn_rate_per_ip = 0\nadmin.listen = {admin}\n"
    )
    gw = support.start_gateway(workdir, conf)
    try:
        cert = p.client("storm")
        for i in range(20):
            assert connect(port, p, cert, f"storm-{i}") == ACCEPTED
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=10) as r:
            counters = json.loads(r.read())["listeners"][0]["counters"]
        # The first broker connection is a full handshake; the next ones are offered its
        # session (mosquitto's OpenSSL decides; with its default session cache, it resumes).
        assert counters["upstream_tls_handshakes"] == 20
        assert counters["upstream_tls_resumed"] >= 15, counters
    finally:
        gw.stop()
        broker.stop()


def test_certificate_identity_for_the_broker_acl(p: support.Pki, workdir: str) -> None:
    """mosquitto with an ACL by user name (pattern %u/#): the certificate's CN is the user
    name, whatever the device claims (MQTT 3.1.1 and 5.0, paho); the client id rewrite is
    seen by mosquitto."""
    acl = os.path.join(workdir, "acl")
    with open(acl, "w") as f:
        f.write("pattern readwrite %u/#\n")
    broker, broker_port = support.start_mosquitto(workdir, extra=f"acl_file {acl}\n")
    port = support.free_port()
    conf = support.listener_conf(
        "id",
        port,
        broker_port,
        p,
        {"peer_cert_as_username": "cn", "peer_cert_as_clientid": "cn"},
    )
    gw = support.start_gateway(workdir, conf)

    def sub(user: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                "mosquitto_sub",
                "-p",
                str(broker_port),
                "-u",
                user,
                "-i",
                f"watch-{user}",
                "-t",
                f"{user}/#",
                "-v",
                "-W",
                "8",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )

    watchers = {user: sub(user) for user in ("alice", "bob")}
    try:
        time.sleep(0.5)
        alice = p.client("alice")
        for version in (paho.MQTTProtocolVersion.MQTTv311, paho.MQTTProtocolVersion.MQTTv5):
            client = paho.Client(
                paho.CallbackAPIVersion.VERSION2, client_id="i-am-bob", protocol=version
            )
            client.username_pw_set("bob", "secret")  # what the device claims: ignored
            client.tls_set_context(support.client_context(p, alice))
            client.connect("127.0.0.1", port)
            client.loop_start()
            support.wait_until(lambda c=client: c.is_connected(), what="paho connected")
            client.publish(f"alice/v{int(version)}", b"mine", qos=1).wait_for_publish(5)
            client.publish(f"bob/v{int(version)}", b"not mine", qos=1).wait_for_publish(5)
            client.disconnect()
            client.loop_stop()
        out = {user: w.communicate(timeout=15)[0] for user, w in watchers.items()}
    finally:
        for w in watchers.values():
            if w.poll() is None:
                w.kill()
        gw.stop()
        broker.stop()
    assert out["alice"].split("\n")[:2] == ["alice/v4 mine", "alice/v5 mine"], out
    assert out["bob"] == "", out  # alice could not publish there, whatever she claimed
    log = broker.log()
    assert re.search(r"New client connected from 127\.0\.0\.1:\d+ as alice \(p2, .*u'alice'\)", log)
    assert re.search(r"New client connected from 127\.0\.0\.1:\d+ as alice \(p5, .*u'alice'\)", log)
    assert "i-am-bob" not in log
    assert not [line for line in log.splitlines() if " as alice " in line and "u'bob'" in line]


class _Capture:
    """A fake broker that records the first bytes of each connection (then answers a
    CONNACK so that the device is accepted)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.first: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                try:
                    conn.settimeout(5)
                    while b"MQTT" not in data:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    self.first.append(data)
                    conn.sendall(ACCEPTED)
                except OSError:  # a health check's connect-and-close, or a stalled peer
                    continue

    def close(self) -> None:
        # close() alone leaves a thread blocked in accept() holding the port open (a later
        # test could be handed the same port number and reach this fake broker): shut the
        # listening socket down first, which wakes accept(), then wait for the thread.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the fake broker's thread did not stop"


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_header_to_the_broker(p: support.Pki, workdir: str, version: str) -> None:
    """Parsed by an independent parser (the proxy-protocol package)."""
    from proxyprotocol.v1 import ProxyProtocolV1
    from proxyprotocol.v2 import ProxyProtocolV2

    capture = _Capture()
    port = support.free_port()
    conf = support.listener_conf("pp", port, capture.port, p, {"upstream_proxy_protocol": version})
    gw = support.start_gateway(workdir, conf)
    try:
        cert = p.client("behind-proxy")
        with support.tls_connect(port, support.client_context(p, cert)) as s:
            local_port = s.getsockname()[1]
            s.sendall(support.connect_packet("pp-device"))
            assert support.read_exact(s, 4) == ACCEPTED
        support.wait_until(lambda: capture.first)
        data = capture.first[0]
        if version == "v1":
            header = data[: data.index(b"\r\n") + 2]
            assert header == f"PROXY TCP4 127.0.0.1 127.0.0.1 {local_port} {port}\r\n".encode()
            result = ProxyProtocolV1().unpack(header)
        else:
            length = int.from_bytes(data[14:16], "big")
            header = data[: 16 + length]
            result = ProxyProtocolV2().unpack(header)
            tlv = result.tlv.ssl
            assert tlv.has_ssl and tlv.has_cert_conn and tlv.verified
            assert tlv.version == "TLSv1.3" and tlv.cn == "behind-proxy"
            assert tlv.cipher and tlv.cipher.startswith("TLS_")
        assert result.source == (ipaddress.ip_address("127.0.0.1"), local_port)
        assert data[len(header) :] == support.connect_packet("pp-device")  # then the CONNECT
    finally:
        gw.stop()
        capture.close()


def test_proxy_header_from_haproxy(p: support.Pki, workdir: str, broker: int) -> None:
    """HAProxy (Debian's package) in TCP mode with send-proxy-v2 in front of a listener with
    proxy_protocol = true: the gateway's logs show the device's address, not HAProxy's; the
    same listener refuses a connection without a header."""
    haproxy = shutil.which("haproxy")
    assert haproxy, "HAProxy is needed (Debian package haproxy; scripts/test.sh)"
    gw_port, front = support.free_port(), support.free_port()
    conf = support.listener_conf(
        "behind", gw_port, broker, p, {"proxy_protocol": "true", "proxy_protocol_timeout": "2s"}
    )
    gw = support.start_gateway(workdir, conf)
    cfg = os.path.join(workdir, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(
            "global\n  log stdout format raw local0\ndefaults\n  mode tcp\n  timeout connect 5s\n"
            "  timeout client 30s\n  timeout server 30s\n"
            f"frontend fe\n  bind 127.0.0.2:{front}\n  default_backend be\n"
            f"backend be\n  server gw 127.0.0.1:{gw_port} send-proxy-v2\n"
        )
    ha = subprocess.Popen(
        [haproxy, "-f", cfg, "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        support.wait_until(lambda: _open("127.0.0.2", front), what="haproxy")
        cert = p.client("via-haproxy")
        ctx = support.client_context(p, cert)
        src = socket.socket()
        src.bind(("127.0.0.3", 0))  # the device's own address, which HAProxy passes on
        src.settimeout(10)
        src.connect(("127.0.0.2", front))
        with ctx.wrap_socket(src, server_hostname="localhost") as s:
            s.sendall(support.connect_packet("via-haproxy"))
            assert support.read_exact(s, 4) == ACCEPTED
            device_port = s.getsockname()[1]
        support.wait_until(lambda: "client_id='via-haproxy'" in gw.log())
        accepted = next(x for x in gw.log().splitlines() if "client_id='via-haproxy'" in x)
        assert f"peer=127.0.0.3:{device_port}" in accepted, accepted
        # Straight to the listener, no header: refused and logged.
        with pytest.raises((ssl.SSLError, OSError)):
            connect(gw_port, p, cert, "no-header")
        support.wait_until(lambda: "reason=bad_proxy_header" in gw.log())
    finally:
        ha.terminate()
        ha.wait(10)
        gw.stop()


def _open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def test_mqtt_health_check_marks_down_and_up(p: support.Pki, workdir: str) -> None:
    """upstream_check = mqtt: a broker that stops answering CONNECT is marked down by the
    check alone (no client needed), and up again once it answers. The check's client id is
    200 bytes: its remaining length takes two bytes, and mosquitto reads it whole."""
    check_id = "gw-check-" + "x" * 191
    broker, broker_port = support.start_mosquitto(workdir)
    port = support.free_port()
    conf = support.listener_conf(
        "hc",
        port,
        broker_port,
        p,
        {
            "upstream_check": "mqtt",
            "upstream_check_interval": "500ms",
            "upstream_check_client_id": check_id,
        },
    )
    gw = support.start_gateway(workdir, conf)
    try:
        support.wait_until(lambda: f" as {check_id} " in broker.log(), what="an MQTT check")
        broker.stop()
        support.wait_until(lambda: "is DOWN: health check: " in gw.log(), 10)
        again, _ = support.start_mosquitto(workdir, port=broker_port)
        try:
            support.wait_until(lambda: "is up: health check passed" in gw.log(), 10)
            assert connect(port, p, p.client("after-check"), "after-check") == ACCEPTED
        finally:
            again.stop()
    finally:
        gw.stop()
