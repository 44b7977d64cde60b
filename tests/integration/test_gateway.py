"""The gateway under twistd in front of a real mosquitto, with real MQTT and TLS clients."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest

from gateway import testing as support
from gateway.demo import pki

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> support.Pki:
    return support.make_pki(str(tmp_path_factory.mktemp("pki-ec")), "ec")


@pytest.fixture(scope="module")
def p_rsa(tmp_path_factory: pytest.TempPathFactory) -> support.Pki:
    return support.make_pki(str(tmp_path_factory.mktemp("pki-rsa")), "rsa")


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, p: support.Pki, p_rsa: support.Pki, broker: int
) -> Iterator[dict[str, object]]:
    """One gateway with an ECDSA listener and an RSA listener in front of one broker."""
    directory = str(tmp_path_factory.mktemp("gw"))
    ports = {"ec": support.free_port(), "rsa": support.free_port()}
    conf = support.listener_conf("ec", ports["ec"], broker, p, {"handshake_timeout": "1s"})
    conf += support.listener_conf("rsa", ports["rsa"], broker, p_rsa)
    process = support.start_gateway(directory, conf)
    yield {"process": process, "ports": ports, "pki": {"ec": p, "rsa": p_rsa}}
    process.stop()


def paho_client(
    client_id: str, p: support.Pki, cert: tuple[str, str] | None, tls: str, v5: bool
) -> paho.Client:
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
    )
    client.tls_set_context(support.client_context(p, cert, tls))
    return client


@pytest.mark.parametrize("kind", ["ec", "rsa"])
@pytest.mark.parametrize("tls", ["1.3", "1.2"])
@pytest.mark.parametrize("v5", [False, True], ids=["mqtt311", "mqtt5"])
def test_publish_and_receive_through_gateway(
    gw: dict[str, object], kind: str, tls: str, v5: bool
) -> None:
    """A paho subscriber receives what a paho publisher sends, both through the gateway."""
    p = gw["pki"][kind]  # type: ignore[index]
    port = gw["ports"][kind]  # type: ignore[index]
    cert = p.client(f"dev-{kind}-{tls}-{v5}")
    topic = f"t/{kind}/{tls}/{v5}"
    got: list[bytes] = []
    subscribed = threading.Event()
    received = threading.Event()

    sub = paho_client(f"sub-{kind}-{tls}-{v5}", p, cert, tls, v5)
    sub.on_subscribe = lambda *a: subscribed.set()

    def on_message(client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        got.append(msg.payload)
        received.set()

    sub.on_message = on_message
    sub.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    try:
        assert subscribed.wait(10), "subscription not acknowledged"
        pub = paho_client(f"pub-{kind}-{tls}-{v5}", p, cert, tls, v5)
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        info = pub.publish(topic, b"hello " + kind.encode(), qos=1)
        info.wait_for_publish(10)
        assert received.wait(10)
        assert got == [b"hello " + kind.encode()]
        pub.disconnect()
        pub.loop_stop()
    finally:
        sub.disconnect()
        sub.loop_stop()
    process = gw["process"]
    assert f"accepted {kind} " in process.log()  # type: ignore[attr-defined]


def test_mosquitto_clients_through_gateway(gw: dict[str, object], p: support.Pki) -> None:
    """mosquitto_sub and mosquitto_pub with the device certificate work through the gateway."""
    port = gw["ports"]["ec"]  # type: ignore[index]
    cert, key = p.client("dev-mosq")
    common = [
        "-h",
        "localhost",
        "-p",
        str(port),
        "--cafile",
        p.ca_file,
        "--cert",
        cert,
        "--key",
        key,
    ]
    sub = subprocess.Popen(
        ["mosquitto_sub", *common, "-t", "mosq/test", "-C", "1", "-W", "15", "-i", "mosq-sub"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        process = gw["process"]
        support.wait_until(lambda: "client_id='mosq-sub'" in process.log(), what="subscriber")  # type: ignore[attr-defined]
        time.sleep(0.3)  # SUBSCRIBE travels after CONNECT
        pub = support.run(
            ["mosquitto_pub", *common, "-t", "mosq/test", "-m", "via-gateway", "-i", "mosq-pub"]
        )
        assert pub.returncode == 0, pub.stderr
        out, _ = sub.communicate(timeout=15)
        assert out.strip() == "via-gateway"
    finally:
        sub.kill()


def _handshake_error(port: int, ctx: ssl.SSLContext) -> str:
    try:
        with support.tls_connect(port, ctx) as s:
            s.sendall(support.connect_packet("x"))
            data = s.recv(10)
            return f"no error, read {data!r}"
    except (ssl.SSLError, ConnectionError) as e:
        return str(e)


@pytest.mark.parametrize("tls", ["1.3", "1.2"])
def test_refused_at_handshake(
    gw: dict[str, object], p: support.Pki, tls: str, tmp_path: object
) -> None:
    """No certificate, an unknown CA, and an expired certificate are refused in the handshake."""
    port = gw["ports"]["ec"]  # type: ignore[index]
    process = gw["process"]
    other = pki.make_ca("another CA")
    stranger = pki.issue(other, f"stranger-{tls}").write(str(tmp_path), "stranger")
    old = pki.now() - datetime.timedelta(days=10)
    expired = p.client(f"expired-{tls}", not_before=old, valid_days=1)
    cases = [(None, "no_certificate"), (stranger, "unknown_ca"), (expired, "expired")]
    for cert, reason in cases:
        before = process.log().count(f"reason={reason}")  # type: ignore[attr-defined]
        error = _handshake_error(port, support.client_context(p, cert, tls))
        assert "no error" not in error, reason
        support.wait_until(
            lambda r=reason, b=before: process.log().count(f"reason={r}") > b,  # type: ignore[attr-defined]
            what=f"log of {reason}",
        )


def test_openssl_s_client_alerts(gw: dict[str, object], p: support.Pki, tmp_path: object) -> None:
    """openssl s_client sees the verification alert for an expired certificate and for an
    unknown issuer."""
    port = gw["ports"]["ec"]  # type: ignore[index]
    old = pki.now() - datetime.timedelta(days=10)
    cert, key = p.client("expired-s-client", not_before=old, valid_days=1)
    result = support.s_client(port, p.ca_file, (cert, key), "1.2")
    assert "certificate expired" in (result.stdout + result.stderr)
    # An issuer the listener does not know: unknown_ca (a missing CRL gets another alert).
    stranger = pki.issue(pki.make_ca("another CA"), "stranger-s").write(str(tmp_path), "s")
    result = support.s_client(port, p.ca_file, stranger, "1.3", "-ign_eof")
    assert "alert unknown ca" in (result.stdout + result.stderr)


def test_tls12_session_resumption(gw: dict[str, object], p: support.Pki, tmp_path: object) -> None:
    """A TLS 1.2 client resumes its session (needs the session id context)."""
    port = gw["ports"]["ec"]  # type: ignore[index]
    cert, key = p.client("resumer")
    sess = os.path.join(str(tmp_path), "sess.pem")
    first = support.s_client(port, p.ca_file, (cert, key), "1.2", "-sess_out", sess)
    assert "New, TLSv1.2" in first.stdout, first.stdout + first.stderr
    second = support.s_client(port, p.ca_file, (cert, key), "1.2", "-sess_in", sess)
    assert "Reused, TLSv1.2" in second.stdout, second.stdout + second.stderr


def test_non_mqtt_and_oversized_connect_refused(gw: dict[str, object], p: support.Pki) -> None:
    """HTTP bytes after the handshake, or a CONNECT above max_packet_size, close the connection."""
    port = gw["ports"]["ec"]  # type: ignore[index]
    ctx = support.client_context(p, p.client("dev-bad"))
    process = gw["process"]
    with support.tls_connect(port, ctx) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(10) == b""
    support.wait_until(lambda: "not_connect: first packet is not CONNECT" in process.log())  # type: ignore[attr-defined]
    with support.tls_connect(port, ctx) as s:
        s.sendall(b"\x10" + support.encode_length(10_000_000))
        assert s.recv(10) == b""
    support.wait_until(lambda: "exceeds max_packet_size 65536" in process.log())  # type: ignore[attr-defined]


def test_handshake_timeout(gw: dict[str, object]) -> None:
    """A TCP connection that never starts TLS is closed after handshake_timeout (1s here)."""
    port = gw["ports"]["ec"]  # type: ignore[index]
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            assert s.recv(10) == b""
        except ConnectionResetError:
            pass  # the gateway aborts stalled connections
    elapsed = time.monotonic() - start
    assert 0.8 < elapsed < 5, elapsed
    process = gw["process"]
    support.wait_until(lambda: "reason=handshake_timeout" in process.log())  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "level, expected", [(4, b"\x20\x02\x00\x03"), (5, b"\x20\x03\x00\x88\x00")]
)
def test_broker_down_gives_server_unavailable(
    p: support.Pki, workdir: str, level: int, expected: bytes
) -> None:
    """With the broker down, the client gets CONNACK 'server unavailable' and is closed."""
    dead = support.free_port()
    port = support.free_port()
    process = support.start_gateway(workdir, support.listener_conf("x", port, dead, p))
    try:
        with support.tls_connect(port, support.client_context(p, p.client("dev-x"))) as s:
            s.sendall(support.connect_packet("x", level=level))
            assert support.read_exact(s, len(expected)) == expected
            assert s.recv(10) == b""
        assert "reason=upstream_unavailable" in process.log()
        # paho sees it as "server unavailable" too.
        client = paho_client("paho-x", p, p.client("dev-paho"), "1.3", level == 5)
        result: list[object] = []
        done = threading.Event()

        def on_connect(
            c: paho.Client, u: object, flags: object, rc: object, props: object = None
        ) -> None:
            result.append(rc)
            done.set()

        client.on_connect = on_connect
        client.connect("127.0.0.1", port)
        client.loop_start()
        assert done.wait(10)
        client.loop_stop()
        assert "unavailable" in str(result[0]).lower()
    finally:
        process.stop()


def test_two_listeners_two_upstreams(p: support.Pki, workdir: str) -> None:
    """Each listener relays to its own broker."""
    brokers = [support.start_mosquitto(workdir) for _ in range(2)]
    ports = [support.free_port(), support.free_port()]
    conf = "".join(support.listener_conf(f"l{i}", ports[i], brokers[i][1], p) for i in range(2))
    process = support.start_gateway(workdir, conf)
    try:
        for i in range(2):
            with support.tls_connect(
                ports[i], support.client_context(p, p.client(f"two-{i}"))
            ) as s:
                s.sendall(support.connect_packet(f"two-listeners-{i}"))
                assert support.read_exact(s, 4) == b"\x20\x02\x00\x00"
                s.sendall(support.publish_packet("which", f"l{i}".encode(), retain=True))
                s.sendall(b"\xe0\x00")  # DISCONNECT
        for i in range(2):
            assert _retained(brokers[i][1], "which") == f"l{i}"
    finally:
        process.stop()
        for b, _ in brokers:
            b.stop()


def test_bad_configuration_exits_before_listening(workdir: str, p: support.Pki) -> None:
    """twistd exits non-zero with one line naming file, line, key and reason; no traceback."""
    port = support.free_port()
    conf_path = os.path.join(workdir, "bad.conf")
    with open(conf_path, "w") as f:
        f.write(support.listener_conf("x", port, 1883, p) + "listener.ssl.x.verfy = verify_peer\n")
    result = support.run(
        [os.path.join(support.BIN, "twistd"), "-n", "--pidfile=", "mqttgw", "-c", conf_path]
    )
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    expected = "listener.ssl.x.verfy: unknown listener option (did you mean 'verify'?)"
    assert lines == [f"mqttgw: {conf_path}:6: {expected}"]
    assert not support.port_open(port)


def test_check_config_prints_effective_configuration(workdir: str, p: support.Pki) -> None:
    """mqttgw check-config validates and prints every key with defaults filled in."""
    conf_path = os.path.join(workdir, "ok.conf")
    with open(conf_path, "w") as f:
        f.write(support.listener_conf("x", 8883, 1883, p))
    result = support.run([os.path.join(support.BIN, "mqttgw"), "check-config", conf_path])
    assert result.returncode == 0, result.stderr
    assert "listener.ssl.x.handshake_timeout = 15s" in result.stdout
    assert "listener.ssl.x.tls_versions = tlsv1.3,tlsv1.2" in result.stdout
    assert "listener.ssl.x.ecdh_curves = X25519,P-256,P-384" in result.stdout
    # The suites as OpenSSL expanded them, those the (ECDSA) key can use.
    assert (
        "#   TLS 1.2 suites usable with its ECDSA key: ECDHE-ECDSA-AES128-GCM-SHA256, "
        "ECDHE-ECDSA-AES256-GCM-SHA384, ECDHE-ECDSA-CHACHA20-POLY1305\n" in result.stdout
    ), result.stdout
    assert "#   key-exchange groups: X25519, P-256, P-384" in result.stdout
    bad = support.run([os.path.join(support.BIN, "mqttgw"), "check-config", "/nonexistent.conf"])
    assert bad.returncode == 1 and "cannot read configuration" in bad.stderr


def _retained(broker_port: int, topic: str) -> str:
    result = support.run(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(broker_port),
            "-t",
            topic,
            "-C",
            "1",
            "-W",
            "5",
        ]
    )
    return result.stdout.strip()


def test_twistd_lists_the_plugin_and_its_options() -> None:
    """After a plain install, twistd knows mqttgw and its options."""
    twistd = os.path.join(support.BIN, "twistd")
    listing = support.run([twistd, "--help"])
    assert "mqttgw" in listing.stdout
    help_ = support.run([twistd, "mqttgw", "--help"])
    assert help_.returncode == 0 and "--config" in help_.stdout


def _privileged_port() -> int:
    for port in range(980, 1020):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1024")


@pytest.mark.skipif(
    os.geteuid() != 0, reason="binding below 1024 and dropping privileges need root"
)
def test_uid_gid_drop_privileges_after_binding(p: support.Pki, broker: int, workdir: str) -> None:
    """twistd --uid/--gid: the port below 1024 is bound first, then the gateway runs as nobody."""
    port = _privileged_port()
    conf_path = os.path.join(workdir, "priv.conf")
    with open(conf_path, "w") as f:
        f.write(support.listener_conf("priv", port, broker, p))
    log_path = os.path.join(workdir, "priv.log")
    proc = subprocess.Popen(
        [
            os.path.join(support.BIN, "twistd"),
            "-n",
            "--pidfile=",
            f"--logfile={log_path}",
            "--uid=65534",
            "--gid=65534",
            "mqttgw",
            "-c",
            conf_path,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        support.wait_until(lambda: support.port_open(port) or proc.poll() is not None, 20)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""

        def uids() -> set[str]:
            with open(f"/proc/{proc.pid}/status") as f:
                return set(next(line for line in f if line.startswith("Uid:")).split()[1:])

        # The port is bound first (as root), then twistd drops privileges.
        support.wait_until(lambda: uids() == {"65534"}, 10, what="privileges dropped")
        with support.tls_connect(port, support.client_context(p, p.client("priv"))) as s:
            s.sendall(support.connect_packet("privileged-port"))
            assert support.read_exact(s, 4) == b"\x20\x02\x00\x00"
    finally:
        proc.terminate()
        proc.wait(10)


def test_one_line_per_session(p: support.Pki, workdir: str, broker: int) -> None:
    """By default a relayed session is one line, written when it ends (HAProxy's tcplog):
    listener, peer, subject, serial, client id, MQTT level, TLS version, resumed, duration,
    bytes, who closed it; no accept line. log_connect = true adds the accept line."""
    for log_connect in ("false", "true"):
        port = support.free_port()
        conf = support.listener_conf("one", port, broker, p) + f"log_connect = {log_connect}\n"
        gw = support.start_gateway(workdir, conf, f"gw-{log_connect}")
        try:
            ctx = support.client_context(p, p.client("one-line"), "1.2")
            with support.tls_connect(port, ctx) as s:
                s.sendall(support.connect_packet("one-line", level=5))
                assert support.read_exact(s, 5)[:1] == b"\x20"
            support.wait_until(lambda gw=gw: "session ended one " in gw.log())
            lines = [x for x in gw.log().splitlines() if "client_id='one-line'" in x]
            (ended,) = [x for x in lines if "session ended one " in x]
            for field in ("peer=127.0.0.1:", "subject=CN=one-line", "serial=", "mqtt=5"):
                assert field in ended, ended
            for field in (
                "tls=TLSv1.2",
                "resumed=no",
                "duration=",
                "bytes_in=",
                "closed_by=client",
            ):
                assert field in ended, ended
            accepted = [x for x in lines if "accepted one " in x]
            assert len(accepted) == (1 if log_connect == "true" else 0), lines
            if accepted:
                assert "tls=TLSv1.2 resumed=no" in accepted[0]
        finally:
            gw.stop()
