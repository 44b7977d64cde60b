"""The last bad inputs that got a traceback or a vague line: each now gets one plain line.

Each test runs the real thing (twistd, mosquitto, a CA server that resets connections) and
asserts the exact line and, for start-up errors, the exit status."""

from __future__ import annotations

import os
import re
import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from gateway import testing as support

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> support.Pki:
    return support.make_pki(str(tmp_path_factory.mktemp("pki")))


def twistd(conf_path: str, workdir: str) -> tuple[int, list[str], str]:
    """Run the gateway in the foreground; (exit status, non-empty output lines, log)."""
    log_path = os.path.join(workdir, "twistd.log")
    result = support.run(
        [os.path.join(support.BIN, "twistd"), "-n", "--pidfile=", f"--logfile={log_path}"]
        + ["mqttgw", "-c", conf_path],
        timeout=30,
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    log = open(log_path).read() if os.path.exists(log_path) else ""
    return result.returncode, lines, log


def check_config(conf_path: str) -> tuple[int, list[str]]:
    result = support.run([os.path.join(support.BIN, "mqttgw"), "check-config", conf_path])
    return result.returncode, [line for line in result.stderr.splitlines() if line.strip()]


def write(workdir: str, name: str, data: bytes | str) -> str:
    path = os.path.join(workdir, name)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return path


def test_port_in_use_is_one_line(p: support.Pki, workdir: str, broker: int) -> None:
    """A listener whose port is taken: one line at the line that declared it, exit 1, and
    nothing else started (the first listener's port is not left bound)."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    first = support.free_port()
    conf = support.listener_conf("a", first, broker, p) + support.listener_conf(
        "b", port, broker, p
    )
    path = write(workdir, "gw.conf", conf)
    try:
        status, lines, log = twistd(path, workdir)
    finally:
        taken.close()
    line = conf.splitlines().index(f"listener.ssl.b = 127.0.0.1:{port}") + 1
    assert status == 1
    assert lines == [
        f"mqttgw: {path}:{line}: listener.ssl.b: cannot listen on 127.0.0.1:{port}: "
        "address already in use"
    ]
    assert "Traceback" not in log and "listener a on" not in log
    assert f"{lines[0][len('mqttgw: ') :]}; not started" in log
    assert not support.port_open(first)


def test_config_bytes_that_are_not_utf8(p: support.Pki, workdir: str) -> None:
    conf = support.listener_conf("x", 8883, 1883, p).encode()
    conf += b"# r\xe9sum\xe9 of the set-up\n"
    path = write(workdir, "latin1.conf", conf)
    line = conf.count(b"\n")
    expected = f"{path}:{line}: byte 0xe9 at column 4 is not UTF-8 (the file must be UTF-8 text)"
    status, lines, _ = twistd(path, workdir)
    assert status == 1 and lines == [f"mqttgw: {expected}"]
    assert check_config(path) == (1, [f"mqttgw: {expected}"])


def test_upstream_is_the_gateway_itself(p: support.Pki, workdir: str) -> None:
    port = support.free_port()
    conf = support.listener_conf("x", port, port, p)
    path = write(workdir, "loop.conf", conf)
    line = conf.splitlines().index(f"listener.ssl.x.upstream = 127.0.0.1:{port}") + 1
    expected = (
        f"mqttgw: {path}:{line}: listener.ssl.x.upstream: 127.0.0.1:{port} is this "
        "listener's own address: the gateway would relay to itself (upstream is the "
        "broker's address)"
    )
    status, lines, _ = twistd(path, workdir)
    assert status == 1 and lines == [expected]
    assert check_config(path) == (1, [expected])


def test_private_key_readable_by_others_is_a_warning(
    p: support.Pki, workdir: str, broker: int
) -> None:
    """As ssh does: named with its mode, not refused."""
    cert, key = p.client("loose-key")  # any certificate and key will do as the server's
    os.chmod(key, 0o644)
    port = support.free_port()
    conf = support.listener_conf("x", port, broker, p, {"certfile": cert, "keyfile": key})
    path = write(workdir, "loose.conf", conf)
    line = conf.splitlines().index(f"listener.ssl.x.keyfile = {key}") + 1
    warning = (
        f"{path}:{line}: listener.ssl.x.keyfile: warning: private key {key} is readable by "
        "group and others (mode 0644); chmod 600 it"
    )
    status, errors = check_config(path)
    assert status == 0 and errors == [f"mqttgw: {warning}"]
    gw = support.start_gateway(workdir, conf)
    try:
        assert warning.replace(path, os.path.join(workdir, "gateway.conf")) in gw.log()
        assert support.port_open(port)  # served all the same
    finally:
        gw.stop()
    os.chmod(key, 0o600)
    assert check_config(path) == (0, [])


def test_broker_closing_a_session_is_logged(p: support.Pki, workdir: str) -> None:
    """A relayed session that the broker ends (mosquitto killed) gets one line saying so, at
    the level of client-side closes."""
    broker, broker_port = support.start_mosquitto(workdir)
    port = support.free_port()
    gw = support.start_gateway(workdir, support.listener_conf("x", port, broker_port, p))
    try:
        ctx = support.client_context(p, p.client("broker-victim"))
        with support.tls_connect(port, ctx) as s:
            s.sendall(support.connect_packet("broker-victim"))
            assert support.read_exact(s, 4) == b"\x20\x02\x00\x00"
            broker.stop()
            assert s.recv(10) == b""  # the gateway closed us after the broker went
        support.wait_until(lambda: "closed_by=broker" in gw.log())
        line = next(x for x in gw.log().splitlines() if "closed_by=broker" in x)
        assert "#info] session ended x peer=127.0.0.1:" in line and "CN=broker-victim" in line
        assert "client_id='broker-victim' mqtt=4 tls=TLSv1.3 resumed=no duration=" in line
        assert " bytes_in=0 " in line
        assert line.endswith(
            (
                "closed_by=broker: connection closed cleanly",
                "closed_by=broker: connection lost (reset, or the network cut)",
                "closed_by=broker: it closed its sending side",
            )
        ), line
        # A client-side close reads the same way, from the other side.
        broker2, broker2_port = support.start_mosquitto(workdir)
        gw2 = support.start_gateway(
            workdir, support.listener_conf("y", support.free_port(), broker2_port, p), "gw2"
        )
        y_port = int(gw2.log().split("listener y on 127.0.0.1:")[1].split()[0].rstrip(","))
        try:
            with support.tls_connect(y_port, ctx) as s:
                s.sendall(support.connect_packet("client-leaves"))
                assert support.read_exact(s, 4) == b"\x20\x02\x00\x00"
            support.wait_until(lambda: "closed_by=client" in gw2.log())
            ended = next(x for x in gw2.log().splitlines() if "closed_by=client" in x)
            assert "#info] session ended y peer=127.0.0.1:" in ended
        finally:
            gw2.stop()
            broker2.stop()
    finally:
        gw.stop()


class _Resetting(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(1024)  # the request, then close without an answer


@pytest.fixture
def resetting_server() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Resetting)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_crl_server_closing_before_an_answer(
    p: support.Pki, workdir: str, broker: int, resetting_server: int
) -> None:
    port = support.free_port()
    url = f"http://127.0.0.1:{resetting_server}/devices.crl"
    conf = support.listener_conf(
        "x", port, broker, p, {"enable_crl_cache": "true", "crl_cache_urls": url}
    )
    gw = support.start_gateway(workdir, conf, ready="fetch failed")
    try:
        line = next(x for x in gw.log().splitlines() if "fetch failed" in x)
        assert f"fetch failed (connect: {url}: connection closed by the server before an " in line
        assert "Failure" not in line and "<" not in line
    finally:
        gw.stop()


def test_sigterm_drains_then_closes(p: support.Pki, workdir: str, broker: int) -> None:
    """SIGTERM with drain_rate = 0: no new connection is accepted, a live session gets the
    whole shutdown_drain to end, then is closed and logged with closed_by=shutdown; twistd
    exits 0. (The paced drain has its own test in test_operations.)"""
    import subprocess
    import time

    port = support.free_port()
    conf = support.listener_conf("x", port, broker, p) + "shutdown_drain = 2s\ndrain_rate = 0\n"
    gw = support.start_gateway(workdir, conf)
    ctx = support.client_context(p, p.client("draining"))
    with support.tls_connect(port, ctx) as s:
        s.sendall(support.connect_packet("draining"))
        assert support.read_exact(s, 4) == b"\x20\x02\x00\x00"
        start = time.monotonic()
        gw.proc.send_signal(subprocess.signal.SIGTERM)  # type: ignore[attr-defined]
        support.wait_until(lambda: not support.port_open(port), 5, what="port closed")
        s.sendall(b"\xc0\x00")  # still relayed during the drain
        assert support.read_exact(s, 2) == b"\xd0\x00"
        s.settimeout(10)
        assert s.recv(10) == b""  # then closed by the gateway
        waited = time.monotonic() - start
        assert 1.8 <= waited <= 5, waited
    assert gw.proc.wait(10) == 0
    log = gw.log()
    # (the port probes above may still be counted as connections)
    stopping = r"stopping x: \d+ connection\(s\) closed over 2s, 0.0 a second"
    assert re.search(stopping, log), log[-2000:]
    assert "client_id='draining'" in log and "closed_by=shutdown: the gateway is stopping" in log
