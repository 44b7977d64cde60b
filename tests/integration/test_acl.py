"""Topic rules bound to the certificate, against a real mosquitto: a device may publish
and subscribe where its CN's rules say, the broker never sees what they deny, a SUBSCRIBE
is answered filter by filter, a reload changes a live session's next packet."""

from __future__ import annotations

import os
import signal
import socket
import ssl
from typing import Any

import pytest

from gateway import testing as support
from gateway.mqtt.packets import encode_length

pytestmark = pytest.mark.integration

RULES = """
# every device: its own tree, by its certificate's CN
pattern readwrite devices/%u/#
topic read public/#
"""


def read_packet(sock: socket.socket) -> bytes:
    head = support.read_exact(sock, 2)
    assert len(head) == 2, "connection closed"
    length, shift, byte, raw = head[1] & 0x7F, 0, head[1], head
    while byte & 0x80:
        shift += 7
        byte = support.read_exact(sock, 1)[0]
        raw += bytes([byte])
        length |= (byte & 0x7F) << shift
    return raw + support.read_exact(sock, length)


def publish(topic: str, payload: bytes, qos: int, pid: int, level: int) -> bytes:
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + (pid.to_bytes(2, "big") if qos else b"")
    body += (b"\x00" if level == 5 else b"") + payload
    return bytes([0x30 | qos << 1]) + encode_length(len(body)) + body


def subscribe(pid: int, filters: list[str], level: int) -> bytes:
    body = pid.to_bytes(2, "big") + (b"\x00" if level == 5 else b"")
    for f in filters:
        body += len(f.encode()).to_bytes(2, "big") + f.encode() + b"\x01"
    return b"\x82" + encode_length(len(body)) + body


def start(workdir: str, name: str, **opts: str) -> tuple[support.Pki, Any, int, Any, int, str]:
    """A PKI, mosquitto and a gateway whose listener has RULES as its acl_file:
    (pki, broker, its plain port, gateway, gateway port, rules path)."""
    p = support.make_pki(workdir)
    broker, plain = support.start_mosquitto(workdir)
    rules = os.path.join(workdir, "acl")
    with open(rules, "w") as f:
        f.write(RULES)
    port = support.free_port()
    conf = support.listener_conf("acl", port, plain, p, {"acl_file": rules, **opts})
    return p, broker, plain, support.start_gateway(workdir, conf, name), port, rules


class Watcher:
    """A client on the broker's plain listener: what the broker delivered."""

    def __init__(self, port: int, topic: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(support.connect_packet("watcher", keep_alive=0))
        assert support.read_exact(self.sock, 4) == b"\x20\x02\x00\x00"
        self.sock.sendall(subscribe(1, [topic], 4))
        assert read_packet(self.sock)[0] == 0x90

    def topics(self, wait: float = 1.0) -> list[str]:
        out = []
        self.sock.settimeout(wait)
        try:
            while True:
                raw = read_packet(self.sock)
                if raw[0] >> 4 == 3:
                    i = 1
                    while raw[i] & 0x80:
                        i += 1
                    size = int.from_bytes(raw[i + 1 : i + 3], "big")
                    out.append(raw[i + 3 : i + 3 + size].decode())
                    if raw[0] & 0x06:
                        self.sock.sendall(b"\x40\x02" + raw[i + 3 + size : i + 5 + size])
        except TimeoutError:
            pass
        return out


@pytest.mark.parametrize("level", [4, 5])
def test_rules_bound_to_the_certificate(workdir: str, level: int) -> None:
    p, broker, plain, gw, port, rules = start(workdir, f"gw-acl-{level}")
    watcher = Watcher(plain, "devices/#")
    try:
        alice = support.tls_connect(port, support.client_context(p, p.client("alice")))
        alice.sendall(support.connect_packet(f"alice-{level}", keep_alive=0, level=level))
        assert read_packet(alice)[0] == 0x20
        # Its own tree: to the broker. Bob's: dropped, acknowledged (0x87 in MQTT 5).
        alice.sendall(publish("devices/alice/t", b"mine", 1, 7, level))
        assert read_packet(alice)[:4] in (b"\x40\x02\x00\x07", b"\x40\x03\x00\x07")
        alice.sendall(publish("devices/bob/t", b"theirs", 1, 8, level))
        ack = read_packet(alice)
        assert ack == (b"\x40\x02\x00\x08" if level == 4 else b"\x40\x03\x00\x08\x87"), ack
        alice.sendall(publish("devices/bob/t", b"theirs", 0, 0, level))  # QoS 0: silently
        # One SUBSCRIBE, two filters: granted and refused, filter by filter.
        alice.sendall(subscribe(9, ["devices/alice/#", "#"], level))
        suback = read_packet(alice)
        assert suback[0] == 0x90 and suback[-2:] == (b"\x01\x80" if level == 4 else b"\x01\x87"), (
            suback
        )
        assert watcher.topics() == ["devices/alice/t"]  # the broker never saw bob's
        # The granted subscription works: a message from the broker side reaches alice.
        watcher.sock.sendall(publish("devices/alice/cmd", b"hello", 0, 0, 4))
        alice.settimeout(5)
        delivered = read_packet(alice)
        assert delivered[0] >> 4 == 3 and b"devices/alice/cmd" in delivered
        # A reload with new rules applies to the live session's next packet.
        with open(rules, "w") as f:
            f.write("topic read public/#\n")
        gw.proc.send_signal(signal.SIGHUP)
        support.wait_until(lambda: "reload applied" in gw.log(), 10, what="reload")
        alice.sendall(publish("devices/alice/t", b"now denied", 1, 10, level))
        ack = read_packet(alice)
        assert ack == (b"\x40\x02\x00\x0a" if level == 4 else b"\x40\x03\x00\x0a\x87"), ack
        assert "devices/alice/t" not in watcher.topics()
        support.wait_until(lambda: "denied acl" in gw.log(), 5)
        assert "PUBLISH 'devices/bob/t'" in gw.log()
        alice.close()
    finally:
        watcher.sock.close()
        gw.stop()
        broker.stop()


def test_an_mqtt5_session_hears_why_at_shutdown(workdir: str) -> None:
    """On a listener with rules, the gateway's own close of an MQTT 5 session (here its
    shutdown) comes after a DISCONNECT 0x8B (server shutting down)."""
    p, broker, plain, gw, port, rules = start(workdir, "gw-acl-shutdown")
    try:
        carol = support.tls_connect(port, support.client_context(p, p.client("carol")))
        carol.sendall(support.connect_packet("carol", keep_alive=0, level=5))
        assert read_packet(carol)[0] == 0x20
        carol.sendall(subscribe(3, ["devices/carol/#"], 5))
        assert read_packet(carol)[0] == 0x90
    finally:
        gw.stop()
        broker.stop()
    carol.settimeout(5)
    assert read_packet(carol) == b"\xe0\x02\x8b\x00"


def test_disconnect_on_denial_and_a_bad_acl_file(workdir: str) -> None:
    """acl_deny_action = disconnect: an MQTT 5 device gets DISCONNECT 0x87, then the close.
    A bad line is a configuration error naming the file's line."""
    p, broker, plain, gw, port, rules = start(
        workdir, "gw-acl-disconnect", acl_deny_action="disconnect"
    )
    try:
        bob = support.tls_connect(port, support.client_context(p, p.client("bob")))
        bob.sendall(support.connect_packet("bob", keep_alive=0, level=5))
        assert read_packet(bob)[0] == 0x20
        bob.sendall(publish("devices/alice/t", b"x", 0, 0, 5))
        bob.settimeout(5)
        assert read_packet(bob) == b"\xe0\x02\x87\x00"
        try:
            assert bob.recv(10) == b""
        except (ConnectionError, ssl.SSLError):
            pass
        support.wait_until(lambda: "reason=acl_denied" in gw.log(), 5)
    finally:
        gw.stop()
        broker.stop()
    with open(rules, "w") as f:
        f.write("topic read a/#\ntopic write a/#/b\n")
    conf_path = os.path.join(workdir, "gw-acl-disconnect.conf")
    checked = support.run([os.path.join(support.BIN, "mqttgw"), "check-config", conf_path])
    assert checked.returncode != 0
    said = checked.stderr + checked.stdout
    assert f"{rules}:2: topic 'a/#/b': '#' must be a whole last level" in said, said


def test_packets_split_byte_by_byte_are_read_the_same(workdir: str) -> None:
    """A PUBLISH sent one byte per TLS record is judged as a whole: the permitted one
    reaches the broker, the denied one does not."""
    p, broker, plain, gw, port, rules = start(workdir, "gw-acl-split")
    watcher = Watcher(plain, "devices/#")
    try:
        dave = support.tls_connect(port, support.client_context(p, p.client("dave")))
        dave.sendall(support.connect_packet("dave", keep_alive=0))
        assert read_packet(dave)[0] == 0x20
        for topic in ("devices/eve/t", "devices/dave/t"):
            for byte in publish(topic, b"split", 1, 5, 4):
                dave.sendall(bytes([byte]))  # one TLS record each
            assert read_packet(dave) == b"\x40\x02\x00\x05"
        assert watcher.topics() == ["devices/dave/t"]
        dave.close()
    finally:
        watcher.sock.close()
        gw.stop()
        broker.stop()


def test_read_rules_judged_per_delivery_as_mosquitto_does(workdir: str) -> None:
    """acl_read_mode = delivery, one deny line: a device's `#` is granted (filter mode
    refuses it), the broker's deliveries on denied topics never reach it (QoS 1 ones
    acknowledged to the broker for it), the others do, in order."""
    p = support.make_pki(workdir)
    broker, plain = support.start_mosquitto(workdir)
    rules = os.path.join(workdir, "acl")
    with open(rules, "w") as f:
        f.write("topic readwrite #\ntopic deny secret/#\n")
    port = support.free_port()
    extra = {"acl_file": rules, "acl_read_mode": "delivery"}
    gw = support.start_gateway(workdir, support.listener_conf("acl", port, plain, p, extra))
    try:
        device = support.tls_connect(port, support.client_context(p, p.client("reader")))
        device.sendall(support.connect_packet("reader", keep_alive=0, level=5))
        assert read_packet(device)[0] == 0x20
        device.sendall(subscribe(1, ["#"], 5))
        assert read_packet(device)[-1] == 0x01  # granted, QoS 1
        sender = socket.create_connection(("127.0.0.1", plain), timeout=5)  # behind the gateway
        sender.sendall(support.connect_packet("sender", keep_alive=0))
        assert support.read_exact(sender, 4) == b"\x20\x02\x00\x00"
        for i, topic in enumerate(["news/1", "secret/plans", "news/2", "secret/more"]):
            sender.sendall(publish(topic, f"m{i}".encode(), 1, i + 1, 4))
            assert read_packet(sender)[0] == 0x40
        device.settimeout(5)
        got = []
        while len(got) < 2:
            raw = read_packet(device)
            if raw[0] >> 4 == 3:
                got.append(raw)
        assert [b"news/1" in g for g in got] == [True, False] and b"news/2" in got[1]
        support.wait_until(lambda: "DELIVER 'secret/plans'" in gw.log(), 5)
        device.close()
    finally:
        gw.stop()
        broker.stop()
