"""MQTT over WebSocket, with the real things: paho-mqtt over wss with a client certificate
through a real mosquitto, CRLs made by ``openssl ca``, the topic rules, a live revocation's
DISCONNECT and close frame; one TLS port for MQTT (mosquitto_pub with and without ALPN) and
WebSocket; plain WebSocket behind a load balancer (ws, with and without its PROXY header); and
every bad request refused clearly. One gateway serves the whole module: a wss listener, an ssl
listener offering ALPN and two ws listeners."""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError as WsProtocolError

from gateway import testing as support
from gateway.mqtt.packets import encode_length
from tests.integration.test_acl import RULES, publish, subscribe
from tests.integration.test_crl import World

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    directory = str(tmp_path_factory.mktemp("websocket"))
    world = World(directory)
    broker, plain = support.start_mosquitto(directory)
    rules = os.path.join(directory, "acl")
    with open(rules, "w") as f:
        f.write(RULES)
    wss, one, ws, lb = (support.free_port() for _ in range(4))
    crl = {
        "enable_crl_cache": "true",
        "crl_cache_urls": f"{world.url('devices')},{world.url('root')}",
        "acl_file": rules,
    }
    conf = support.listener_conf(
        "w",
        wss,
        plain,
        world.p,
        {**crl, "connect_timeout": "2s", "check_origin_enable": "true"}
        # paho names itself by the address it connects to.
        | {"allowed_origins": f"https://dashboard.test, https://localhost:{wss}"}
        | {"max_frame_size": "32KB"},
        family="wss",
    )
    conf += support.listener_conf(
        "a", one, plain, world.p, {**crl, "alpn": "mqtt, x-amzn-mqtt-ca, http/1.1"}
    )
    # Behind a TLS-terminating load balancer: plain WebSocket, with and without its PROXY
    # header.
    conf += support.listener_conf("ws", ws, plain, world.p, family="ws")
    conf += support.listener_conf("lb", lb, plain, world.p, {"proxy_protocol": "true"}, "ws")
    admin = support.free_port()
    conf += f"crl_cache.refresh_interval = 1s\nadmin.listen = {admin}\n"
    gw = support.start_gateway(directory, conf, "gw-ws", ready="crl a: ready")
    support.wait_until(lambda: all(support.port_open(x) for x in (wss, one, ws, lb)), what="ports")
    yield {
        "world": world,
        "gw": gw,
        "wss": wss,
        "one": one,
        "ws": ws,
        "lb": lb,
        "plain": plain,
        "admin": admin,
    }
    gw.stop()
    broker.stop()
    world.http.stop()


class RawWs:
    """A WebSocket client over TLS, frame by frame (wsproto's client, sans-IO)."""

    def __init__(
        self,
        port: int,
        p: support.Pki,
        cert: tuple[str, str] | None,
        path: str = "/mqtt",
        subprotocols: tuple[str, ...] = ("mqtt",),
        headers: tuple[tuple[bytes, bytes], ...] = (),
        alpn: list[str] | None = None,
        plain: bytes | None = None,
    ) -> None:
        """``plain``: no TLS (a ws listener), these bytes first (a PROXY header)."""
        if plain is not None:
            self.sock: Any = socket.create_connection(("127.0.0.1", port), timeout=5)
            self.sock.sendall(plain)
        else:
            ctx = support.client_context(p, cert)
            if alpn:
                ctx.set_alpn_protocols(alpn)
            self.sock = support.tls_connect(port, ctx)
        self.ws = WSConnection(ConnectionType.CLIENT)
        request = Request(
            host="localhost",
            target=path,
            subprotocols=list(subprotocols),
            extra_headers=list(headers),
        )
        self.sock.sendall(self.ws.send(request))

    def events(self, timeout: float = 5.0) -> list[Any]:
        """What the gateway sent next (at least one event, or [] once it closed)."""
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except (ssl.SSLError, OSError):
                data = b""
            try:
                self.ws.receive_data(data or None)
                got = list(self.ws.events())
            except WsProtocolError:  # the gateway closed before answering the request
                return []
            if got or not data:
                return got
        raise TimeoutError("nothing from the gateway")

    def send(self, data: bytes) -> None:
        self.sock.sendall(self.ws.send(Message(data=data)))

    def mqtt(self) -> bytes:
        """The next binary message's payload (an MQTT packet from the gateway)."""
        for event in self.events():
            if isinstance(event, BytesMessage):
                return bytes(event.data)
            raise AssertionError(f"expected a binary message, got {event!r}")
        raise AssertionError("closed")


def paho_ws(
    site: dict[str, Any], client_id: str, cert: tuple[str, str] | None, v5: bool, port: int
) -> paho.Client:
    """A paho-mqtt client over WebSocket: over TLS with ``cert``, else plain (ws)."""
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        transport="websockets",
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
    )
    client.ws_set_options(path="/mqtt")
    if cert is not None:
        client.tls_set_context(support.client_context(site["world"].p, cert))
    return client


@pytest.mark.parametrize("v5", [False, True], ids=["mqtt311", "mqtt5"])
def test_paho_over_wss_with_a_client_certificate(site: dict[str, Any], v5: bool) -> None:
    """paho-mqtt over WebSocket with its client certificate: it subscribes and receives
    what another paho client publishes, both through the wss listener to mosquitto; the
    session line says transport=wss and the subprotocol."""
    p = site["world"].p
    topic = f"devices/ws-sub-{v5}/t"
    got: list[bytes] = []
    subscribed, received = threading.Event(), threading.Event()
    sub = paho_ws(site, f"ws-sub-{v5}", p.client(f"ws-sub-{v5}"), v5, site["wss"])
    sub.on_connect = lambda c, u, f, rc, props=None: c.subscribe(topic, qos=1)
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_message = lambda c, u, m: (got.append(m.payload), received.set())
    pub = paho_ws(site, f"ws-pub-{v5}", p.client(f"ws-sub-{v5}"), v5, site["wss"])
    try:
        sub.connect("localhost", site["wss"])
        sub.loop_start()
        assert subscribed.wait(10), site["gw"].log()[-2000:]
        pub.connect("localhost", site["wss"])
        pub.loop_start()
        pub.publish(topic, b"over websocket", qos=1).wait_for_publish(10)
        assert received.wait(10)
        assert got == [b"over websocket"]
    finally:
        for c in (sub, pub):
            c.loop_stop()
            c.disconnect()
    support.wait_until(lambda: f"client_id='ws-sub-{v5}'" in site["gw"].log())
    line = next(x for x in site["gw"].log().splitlines() if f"client_id='ws-sub-{v5}'" in x)
    assert f"transport=wss subprotocol=mqtt origin='https://localhost:{site['wss']}'" in line


def test_plain_ws_behind_a_load_balancer(site: dict[str, Any]) -> None:
    """A ws listener (TLS ended by a load balancer): paho-mqtt over plain WebSocket,
    MQTT 5 with a user name, publishes and receives through mosquitto; the session line
    says transport=ws. With proxy_protocol, the load balancer's PROXY header names the
    device (in the session line and to the limits), and a connection without one is
    refused before any WebSocket byte is read."""
    topic = "devices/plain-ws/t"
    got: list[bytes] = []
    subscribed, received = threading.Event(), threading.Event()
    client = paho_ws(site, "plain-ws", None, True, site["ws"])
    client.username_pw_set("dashboard-user", "secret")
    client.on_connect = lambda c, u, f, rc, props=None: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = lambda c, u, m: (got.append(m.payload), received.set())
    try:
        client.connect("127.0.0.1", site["ws"])
        client.loop_start()
        assert subscribed.wait(10), _log(site)[-2000:]
        client.publish(topic, b"behind the load balancer", qos=1).wait_for_publish(10)
        assert received.wait(10)
        assert got == [b"behind the load balancer"]
    finally:
        client.loop_stop()
        client.disconnect()
    support.wait_until(lambda: "client_id='plain-ws'" in _log(site))
    line = next(x for x in _log(site).splitlines() if "client_id='plain-ws'" in x)
    assert " ws peer=127.0.0.1:" in line and "transport=ws subprotocol=mqtt" in line, line
    assert "tls=-" in line, line

    header = b"PROXY TCP4 198.51.100.7 127.0.0.1 40001 443\r\n"
    ws = RawWs(site["lb"], site["world"].p, None, plain=header)
    assert isinstance(ws.events()[0], AcceptConnection)
    ws.send(support.connect_packet("behind-lb", keep_alive=0))
    assert ws.mqtt() == b"\x20\x02\x00\x00"
    ws.sock.close()
    support.wait_until(lambda: "client_id='behind-lb'" in _log(site))
    line = next(x for x in _log(site).splitlines() if "client_id='behind-lb'" in x)
    assert "peer=198.51.100.7:40001" in line and "transport=ws" in line, line

    bare = RawWs(site["lb"], site["world"].p, None, plain=b"")  # no PROXY header
    assert bare.events() == []
    support.wait_until(lambda: "refused lb" in _log(site) and "bad_proxy_header" in _log(site))


def test_a_revoked_device_is_refused_on_wss_as_on_tls(site: dict[str, Any]) -> None:
    """A device revoked in the CRL is refused at the handshake, on the wss port as on TLS."""
    world = site["world"]
    revoked = world.p.client("ws-revoked")
    world.devices_ca.revoke(revoked[0])
    world.publish()
    support.wait_until(lambda: _refused_now(site, revoked), 15, what="the new CRL in force")
    support.wait_until(lambda: "reason=revoked subject=CN=ws-revoked" in _log(site), 5)


def _refused_now(site: dict[str, Any], cert: tuple[str, str]) -> bool:
    try:
        ws = RawWs(site["wss"], site["world"].p, cert)
        return ws.events(3) == []
    except (ssl.SSLError, OSError) as e:
        return "revoked" in str(e) or isinstance(e, ssl.SSLError)


def test_topic_rules_apply_on_wss(site: dict[str, Any]) -> None:
    """The acl_file's rules, bound to the certificate, judge the packets a device sends
    inside its WebSocket messages exactly as over TLS."""
    p = site["world"].p
    ws = RawWs(site["wss"], p, p.client("alice"))
    (accepted,) = ws.events()
    assert isinstance(accepted, AcceptConnection) and accepted.subprotocol == "mqtt"
    ws.send(support.connect_packet("alice-ws", keep_alive=0))
    assert ws.mqtt() == b"\x20\x02\x00\x00"
    ws.send(subscribe(9, ["devices/alice/#", "secret/#"], 4))
    assert ws.mqtt()[-2:] == b"\x01\x80"  # one granted, one refused by the rules
    ws.send(publish("devices/bob/x", b"theirs", 1, 5, 4))  # denied: acknowledged, dropped
    assert ws.mqtt() == b"\x40\x02\x00\x05"


def test_live_revocation_sends_disconnect_then_a_close_frame(site: dict[str, Any]) -> None:
    """An MQTT 5 session over wss whose certificate a CRL refresh revokes hears DISCONNECT
    0x87 (in a binary message), then the close frame 1008 (policy violation)."""
    world = site["world"]
    cert = world.p.client("ws-live")
    ws = RawWs(site["wss"], world.p, cert)
    assert isinstance(ws.events()[0], AcceptConnection)
    ws.send(support.connect_packet("ws-live", keep_alive=0, level=5))
    connack = ws.mqtt()
    assert connack[0] == 0x20 and connack[3] == 0  # accepted (mosquitto adds properties)
    world.devices_ca.revoke(cert[0])
    world.publish()
    seen: list[Any] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not any(isinstance(e, CloseConnection) for e in seen):
        seen += ws.events(15)
    messages = [bytes(e.data) for e in seen if isinstance(e, BytesMessage)]
    closes = [e for e in seen if isinstance(e, CloseConnection)]
    assert messages == [b"\xe0\x02\x87\x00"], seen
    assert closes and closes[0].code == 1008, seen


def _mosquitto_pub(site: dict[str, Any], cert: tuple[str, str], alpn: str | None, msg: str) -> str:
    args = ["mosquitto_pub", "-h", "localhost", "-p", str(site["one"]), "--cafile"]
    args += [site["world"].p.ca_file, "--cert", cert[0], "--key", cert[1]]
    args += ["-t", "devices/mosq/one", "-m", msg, "-i", f"pub-{alpn}", "-q", "1"]
    if alpn:
        args += ["--tls-alpn", alpn]
    done = support.run(args)
    return f"{done.returncode} {done.stderr.strip()}"


def test_one_port_for_mqtt_alpn_and_websocket(site: dict[str, Any]) -> None:
    """On the ssl listener offering mqtt, x-amzn-mqtt-ca and http/1.1: mosquitto_pub with
    either ALPN name and with none, and a paho WebSocket client, all publish through the
    one port; a subscriber (over WebSocket, on the same port) gets every message."""
    p = site["world"].p
    mosq = p.client("mosq")
    got: list[bytes] = []
    subscribed = threading.Event()
    sub = paho_ws(site, "one-port-sub", p.client("mosq"), False, site["one"])
    sub.on_connect = lambda c, u, f, rc, props=None: c.subscribe("devices/mosq/#", qos=1)
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_message = lambda c, u, m: got.append(m.payload)
    try:
        sub.connect("localhost", site["one"])
        sub.loop_start()
        assert subscribed.wait(10)
        for alpn in ("mqtt", "x-amzn-mqtt-ca", None):
            assert _mosquitto_pub(site, mosq, alpn, f"via {alpn}").startswith("0 "), alpn
        support.wait_until(lambda: len(got) == 3, 10, what="three messages")
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert sorted(got) == [b"via None", b"via mqtt", b"via x-amzn-mqtt-ca"]
    # An ALPN name the listener does not offer: no_application_protocol, at the handshake.
    ctx = support.client_context(p, mosq)
    ctx.set_alpn_protocols(["h2"])
    with pytest.raises(ssl.SSLError, match="NO_APPLICATION_PROTOCOL|no application protocol"):
        support.tls_connect(site["one"], ctx).recv(1)
    support.wait_until(lambda: "no application protocol in common (offered: h2)" in _log(site))


def _http(site: dict[str, Any], request: bytes) -> bytes:
    p = site["world"].p
    with support.tls_connect(site["wss"], support.client_context(p, p.client("http"))) as s:
        s.sendall(request)
        s.settimeout(5)
        out = b""
        while True:
            try:
                chunk = s.recv(4096)
            except (ssl.SSLError, OSError):
                break
            if not chunk:
                break
            out += chunk
        return out


def test_bad_requests_get_a_clear_refusal(site: dict[str, Any]) -> None:
    """A non-upgrade GET, a wrong path, no supported subprotocol, an origin not allowed:
    each an HTTP status, a log line with its reason, and nothing reaches the broker; a text
    message and an oversized one (max_frame_size 32 KB): their close codes; a slow upgrade:
    closed after connect_timeout."""
    p = site["world"].p
    gw = site["gw"]
    plain_get = _http(site, b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert plain_get.startswith(b"HTTP/1.1 400"), plain_get
    for kwargs, status in [
        ({"path": "/other"}, 404),
        ({"subprotocols": ("chat",)}, 400),
        ({"headers": ((b"origin", b"https://evil.test"),)}, 403),
    ]:
        ws = RawWs(site["wss"], p, p.client("bad"), **kwargs)
        events = ws.events()
        assert isinstance(events[0], RejectConnection) and events[0].status_code == status
        assert any(isinstance(e, RejectData) for e in events + ws.events())
    # After the upgrade: a text message, then a message over max_frame_size (64 KB).
    ws = RawWs(site["wss"], p, p.client("bad"))
    ws.events()
    ws.sock.sendall(ws.ws.send(TextMessage(data="CONNECT please")))
    (close,) = [e for e in ws.events() if isinstance(e, CloseConnection)]
    assert close.code == 1003
    ws = RawWs(site["wss"], p, p.client("bad"))
    ws.events()
    # A frame announcing 100 MiB, carrying the start of a CONNECT of 40 KB (under
    # max_packet_size: the MQTT reader waits for it); past 32 KB of the message, 1009.
    header = bytes([0x82, 0xFF]) + (100 * 1024 * 1024).to_bytes(8, "big") + b"\x00" * 4
    connect = b"\x10" + encode_length(40 * 1024) + b"\x00\x04MQTT\x04\x02\x00\x00"
    ws.sock.sendall(header + connect + b"\x00" * (40 * 1024))
    closes = [e for e in ws.events() if isinstance(e, CloseConnection)]
    assert closes and closes[0].code == 1009
    # A slow-loris upgrade: half a request, then nothing: closed after connect_timeout (2s).
    slow = support.tls_connect(site["wss"], support.client_context(p, p.client("slow")))
    slow.sendall(b"GET /mqtt HTTP/1.1\r\nHost: local")
    started = time.monotonic()
    slow.settimeout(10)
    try:
        assert slow.recv(100) == b""
    except (ssl.SSLError, ConnectionError):
        pass
    assert time.monotonic() - started < 6
    support.wait_until(lambda: gw.log().count("reason=bad_websocket") >= 6, 10)
    log = gw.log()
    assert (
        "path '/other' is not /mqtt" in log and "origin 'https://evil.test' is not allowed" in log
    )
    assert "a text message (MQTT is binary)" in log and "over max_frame_size" in log
    assert "reason=connect_timeout" in log
    assert "client_id='CONNECT" not in log  # nothing reached the broker


def test_status_and_metrics_count_sessions_by_transport(site: dict[str, Any]) -> None:
    """What operators see: /metrics counts relayed sessions and refusals after the
    handshake by transport; /status says the same per listener."""
    from tests.integration.test_operations import http, metrics

    p = site["world"].p
    ws = RawWs(site["wss"], p, p.client("counted"))
    ws.events()
    ws.send(support.connect_packet("counted", keep_alive=0))
    assert ws.mqtt() == b"\x20\x02\x00\x00"
    m = metrics(site["admin"])
    assert m[("mqttgw_sessions_total", (("listener", "w"), ("transport", "wss")))] >= 1
    refused = ("mqttgw_refused_after_handshake_total", (("listener", "w"), ("transport", "wss")))
    assert m[refused] >= 1
    import json

    code, _, body = http(site["admin"], "/status")
    assert code == 200
    (w,) = [x for x in json.loads(body)["listeners"] if x["name"] == "w"]
    assert w["counters"]["sessions_by_transport"]["wss"] >= 1


def _log(site: dict[str, Any]) -> str:
    return str(site["gw"].log())
