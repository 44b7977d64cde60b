"""Operating the gateway as a user would: the admin listener (metrics, status, readiness,
access rules), reload by SIGHUP and POST /reload, ``mqttgw status``, and the status page
in a real headless Chromium."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client.parser import text_string_to_metric_families

from gateway import testing as support
from gateway.demo import pki
from gateway.testing.crl import CrlHttpServer, crl_der

pytestmark = pytest.mark.integration

ACCEPTED = b"\x20\x02\x00\x00"
TOKEN = "0123456789abcdef0123456789abcdef"


def http(
    port: int, path: str, method: str = "GET", token: str | None = None, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=body)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def metrics(
    port: int, token: str | None = None
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    code, _, body = http(port, "/metrics", token=token)
    assert code == 200, body
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def connect(port: int, ctx: ssl.SSLContext, client_id: str) -> bytes | str:
    try:
        with support.tls_connect(port, ctx) as s:
            s.sendall(support.connect_packet(client_id))
            return support.read_exact(s, 4)
    except (ssl.SSLError, OSError) as e:
        return str(e)


def server_fingerprint(port: int, p: support.Pki, cert: tuple[str, str]) -> str:
    """The SHA-256 of the certificate openssl s_client is shown."""
    out = support.s_client(port, p.ca_file, cert, "1.3", "-showcerts").stdout
    pem = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
    assert pem, out
    cert = x509.load_pem_x509_certificate(pem.group(0).encode())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> support.Pki:
    return support.make_pki(str(tmp_path_factory.mktemp("pki")))


def write_token(directory: str) -> str:
    path = os.path.join(directory, "admin.token")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(TOKEN + "\n")
    return path


def test_metrics_move_with_connections(p: support.Pki, workdir: str, broker: int) -> None:
    """A stock Prometheus parser reads /metrics; accepted and refused (by reason) move."""
    port, admin = support.free_port(), support.free_port()
    conf = support.listener_conf("m", port, broker, p) + f"admin.listen = {admin}\n"
    gw = support.start_gateway(workdir, conf)
    try:
        before = metrics(admin)
        assert before[("mqttgw_connections_accepted_total", (("listener", "m"),))] == 0
        assert before[("mqttgw_ready", ())] == 1
        assert connect(port, support.client_context(p, p.client("metered")), "metered") == (
            ACCEPTED
        )
        assert connect(port, support.client_context(p, None), "anonymous") != ACCEPTED
        stranger = pki.issue(pki.make_ca("other CA"), "stranger").write(workdir, "stranger")
        assert connect(port, support.client_context(p, stranger), "stranger") != ACCEPTED
        support.wait_until(
            lambda: (
                metrics(admin)[
                    (
                        "mqttgw_connections_refused_total",
                        (("listener", "m"), ("reason", "unknown_ca")),
                    )
                ]
                == 1
            )
        )
        after = metrics(admin)
        key = (("listener", "m"),)
        assert after[("mqttgw_connections_accepted_total", key)] == 1
        refused = "mqttgw_connections_refused_total"
        assert after[(refused, (("listener", "m"), ("reason", "no_certificate")))] == 1
        assert after[(refused, (("listener", "m"), ("reason", "revoked")))] == 0
        assert after[("mqttgw_handshake_duration_seconds_count", key)] >= 1
        assert after[("mqttgw_upstream_connect_duration_seconds_count", key)] == 1
        closed = ("mqttgw_sessions_closed_total", (("closed_by", "client"), ("listener", "m")))
        support.wait_until(lambda: metrics(admin)[closed] == 1)
        assert after[("mqttgw_reactor_lag_seconds_count", ())] > 0
        # No per-client label anywhere.
        assert not any(
            name for name, labels in after for k, _ in labels if k in ("peer", "client_id")
        )
        # A gateway that is not run (stopped here; starved of CPU, or a paused VM, alike)
        # wakes late for its timers: that is reactor lag too, logged and in the gauge.
        gw.proc.send_signal(signal.SIGSTOP)
        time.sleep(1.6)  # past the monitor's 1 s heartbeat, whatever its phase
        gw.proc.send_signal(signal.SIGCONT)
        gw.wait_log("reactor stalled for")
        support.wait_until(lambda: metrics(admin)[("mqttgw_reactor_lag_max_seconds", ())] > 0.5)
    finally:
        gw.proc.send_signal(signal.SIGCONT)
        gw.stop()


def test_status_ready_live_and_access(p: support.Pki, workdir: str, broker: int) -> None:
    """/status field by field, /ready and /live, and the access rules: a token (401 without
    or with a wrong one), open_read, 404, 405, 413."""
    port, admin = support.free_port(), support.free_port()
    token_file = write_token(workdir)
    conf = support.listener_conf("s", port, broker, p) + (
        f"admin.listen = 127.0.0.1:{admin}\nadmin.token_file = {token_file}\n"
        "admin.open_read = true\n"
    )
    gw = support.start_gateway(workdir, conf)
    try:
        code, headers, body = http(admin, "/status")
        assert code == 200 and headers["Content-Type"] == "application/json"
        doc = json.loads(body)
        assert doc["ready"] == {"ok": True, "reason": ""}
        assert doc["problems"] == []
        (listener,) = doc["listeners"]
        assert listener["name"] == "s" and listener["bind"] == f"127.0.0.1:{port}"
        assert listener["upstream"] == f"127.0.0.1:{broker}"
        assert listener["accepting"] is True and listener["tls"].startswith("intermediate")
        assert listener["counters"]["active"] == 0 and listener["crl"] is None
        assert http(admin, "/ready")[0] == 200 and http(admin, "/live")[0] == 200
        # Changing endpoints never without the token, even with open_read.
        code, headers, _ = http(admin, "/reload", "POST")
        assert code == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert http(admin, "/reload", "POST", token="wrong-token-wrong-token")[0] == 401
        assert http(admin, "/refresh", "POST", token=TOKEN)[0] == 200
        assert http(admin, "/nothing-here")[0] == 404
        code, headers, _ = http(admin, "/reload")
        assert code == 405 and headers["Allow"] == "POST"
        assert http(admin, "/status", "DELETE")[0] == 405
        code, _, body = http(admin, "/reload", "POST", token=TOKEN, body=b"x" * 5000)
        assert code == 413, body
        code, _, body = http(admin, "/reload", "POST", token=TOKEN)
        assert code == 200 and json.loads(body) == {"ok": True, "changes": []}
        assert "Traceback" not in gw.log()
    finally:
        gw.stop()


def test_admin_needs_a_token_off_loopback(p: support.Pki, workdir: str) -> None:
    conf_path = os.path.join(workdir, "open.conf")
    with open(conf_path, "w") as f:
        f.write(support.listener_conf("x", 8883, 1883, p) + "admin.listen = 0.0.0.0:9180\n")
    result = support.run([os.path.join(support.BIN, "mqttgw"), "check-config", conf_path])
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"mqttgw: {conf_path}:6: admin.listen: 0.0.0.0 is not a loopback address: set "
        "admin.token_file (anyone who reaches the admin listener could read the status and "
        "the metrics)"
    )


def _subscribe(port: int, ctx: ssl.SSLContext, topic: str) -> ssl.SSLSocket:
    s = support.tls_connect(port, ctx, timeout=15)
    s.sendall(support.connect_packet("subscriber", keep_alive=0))
    assert support.read_exact(s, 4) == ACCEPTED
    t = topic.encode()
    body = b"\x00\x01" + len(t).to_bytes(2, "big") + t + b"\x00"
    s.sendall(b"\x82" + support.encode_length(len(body)) + body)
    assert support.read_exact(s, 5)[0] == 0x90  # SUBACK
    return s


def _publish(broker: int, topic: str, message: str) -> None:
    support.run(["mosquitto_pub", "-p", str(broker), "-t", topic, "-m", message], check=True)


def _received(sock: ssl.SSLSocket, message: str) -> bool:
    data = b""
    deadline = time.monotonic() + 10
    while message.encode() not in data and time.monotonic() < deadline:
        data += sock.recv(4096)
    return message.encode() in data


@pytest.mark.parametrize("workers", ["", "workers = 2\nworker_affinity = kernel\n"])
def test_reload_without_dropping_anyone(
    p: support.Pki, workdir: str, broker: int, workers: str
) -> None:
    """SIGHUP and POST /reload: a subscriber connected before keeps receiving; a new server
    certificate is shown to the next client; a new CA bundle lets the new CA's devices in and
    refuses the old one's; a listener is added, then removed (its client closed after
    reload_drain, closed_by=reload); a broken file is refused and the running configuration
    keeps serving. With two workers (connections spread by the kernel): the same, every
    worker applying each reload the master applied."""
    port, extra_port, admin = support.free_port(), support.free_port(), support.free_port()
    cert_path, key_path = os.path.join(workdir, "srv.pem"), os.path.join(workdir, "srv.key")
    ca_path = os.path.join(workdir, "cas.pem")
    shutil.copy(p.server_cert, cert_path)
    shutil.copy(p.server_key, key_path)
    shutil.copy(p.ca_file, ca_path)
    token_file = write_token(workdir)
    common = f"admin.listen = {admin}\nadmin.token_file = {token_file}\nreload_drain = 1s\n"
    common += workers
    # CRL checking on, with the CRLs of both CAs the test uses: each validates only while
    # its CA is in the bundle (a reload that changes the bundle replaces the CRL service).
    os.makedirs(os.path.join(workdir, "b"))
    other = support.make_pki(os.path.join(workdir, "b"))
    crls = CrlHttpServer()
    for name, ca in (("d", p.inter), ("r", p.root), ("od", other.inter), ("or", other.root)):
        crls.serve(f"/{name}.crl", 200, crl_der(ca, []))
    files = {
        "certfile": cert_path,
        "keyfile": key_path,
        "cacertfile": ca_path,
        "enable_crl_cache": "true",
        "crl_cache_urls": ",".join(crls.url(f"/{n}.crl") for n in ("d", "r", "od", "or")),
    }
    base = support.listener_conf("main", port, broker, p, files) + common
    gw = support.start_gateway(workdir, base, ready="serving" if workers else "listener ")
    conf_path = os.path.join(workdir, "gateway.conf")
    support.wait_until(lambda: http(admin, "/ready", token=TOKEN)[0] == 200, 30, what="ready")

    def reload_by(how: str, count: int) -> None:
        if how == "hup":
            gw.proc.send_signal(signal.SIGHUP)
        else:
            code, _, body = http(admin, "/reload", "POST", token=TOKEN)
            assert code == 200, body
        support.wait_until(lambda: gw.log().count("reload applied") >= count, 20)

    try:
        device = p.client("device-a")
        sub = _subscribe(port, support.client_context(p, device), "fleet/news")
        first = server_fingerprint(port, p, device)

        # 1. A new server certificate on disk, SIGHUP: new clients see it.
        pki.issue(p.inter, "localhost", server=True).write(workdir, "srv")
        reload_by("hup", 1)
        assert server_fingerprint(port, p, device) != first
        assert "certificate (serial" in gw.log()
        assert "crl settings" not in gw.log()  # the CRL service (and its CRLs) stayed
        _publish(broker, "fleet/news", "after-certificate-reload")
        assert _received(sub, "after-certificate-reload")

        # 2. A new CA bundle: only the new CA's devices get in (its CRLs now validate), and
        #    a device of the removed CA cannot resume a TLS session it got before the reload
        #    (the new context has its own session cache and ticket keys).
        ctx_old = support.client_context(p, p.client("resumer"))
        with support.tls_connect(port, ctx_old) as s:
            s.sendall(support.connect_packet("resumer"))
            assert support.read_exact(s, 4) == ACCEPTED  # the ticket came with the CONNACK
            saved = s.session
        assert saved is not None
        shutil.copy(other.ca_file, ca_path)
        reload_by("post", 2)
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            with ctx_old.wrap_socket(raw, server_hostname="localhost", session=saved) as s:
                assert not s.session_reused
                s.sendall(support.connect_packet("resumer-again"))
                refused = s.recv(4)
        except (ssl.SSLError, OSError):
            refused = b""
        assert refused != ACCEPTED
        newcomer = other.client("device-b")
        ctx_b = ssl.create_default_context(cafile=p.ca_file)  # the server is still p's
        ctx_b.load_cert_chain(*newcomer)
        assert connect(port, ctx_b, "device-b") == ACCEPTED
        assert connect(port, support.client_context(p, p.client("device-a2")), "a2") != ACCEPTED
        support.wait_until(lambda: "reason=unknown_ca" in gw.log())
        _publish(broker, "fleet/news", "after-ca-reload")
        assert _received(sub, "after-ca-reload")  # the live session was not touched

        # 3. A listener added, moved to another port, then removed.
        shutil.copy(p.ca_file, ca_path)
        with open(conf_path, "w") as f:
            f.write(base + support.listener_conf("extra", extra_port, broker, p))
        reload_by("hup", 3)
        assert "listener extra added" in gw.log()
        ctx_a = support.client_context(p, p.client("device-a3"))
        held = support.tls_connect(extra_port, ctx_a)
        held.sendall(support.connect_packet("on-extra"))
        assert support.read_exact(held, 4) == ACCEPTED
        moved_port = support.free_port()
        with open(conf_path, "w") as f:
            f.write(base + support.listener_conf("extra", moved_port, broker, p))
        reload_by("hup", 4)
        assert "listener extra: bind" in gw.log()
        assert not support.port_open(extra_port)
        assert connect(moved_port, ctx_a, "on-moved") == ACCEPTED
        held.sendall(b"\xc0\x00")  # accepted on the old address: still relayed
        assert support.read_exact(held, 2) == b"\xd0\x00"
        with open(conf_path, "w") as f:
            f.write(base)
        reload_by("hup", 5)
        assert not support.port_open(moved_port)
        held.settimeout(10)
        assert held.recv(10) == b""  # closed after reload_drain
        support.wait_until(lambda: "closed_by=reload" in gw.log())

        # 4. A broken file is refused; the running configuration keeps serving.
        with open(conf_path, "w") as f:
            f.write(base + "listener.ssl.main.verfy = verify_peer\n")
        code, _, body = http(admin, "/reload", "POST", token=TOKEN)
        assert code == 409
        error = json.loads(body)["error"]
        assert error.endswith(
            "listener.ssl.main.verfy: unknown listener option (did you mean 'verify'?)"
        )
        assert "reload refused: " + error + "; the running configuration stays in force" in gw.log()
        assert connect(port, ctx_a, "still-served") == ACCEPTED
        _publish(broker, "fleet/news", "after-refused-reload")
        assert _received(sub, "after-refused-reload")
        doc = json.loads(http(admin, "/status", token=TOKEN)[2])
        assert doc["reload"]["count"] == 5 and doc["reload"]["failures"] == 1
        assert any(
            pr["what"].startswith("the last reload was refused") and pr["severity"] == "error"
            for pr in doc["problems"]
        )
        sub.close()
        held.close()
    finally:
        gw.stop()
        crls.stop()


def chromium(workdir: str, *args: str) -> str:
    """Headless Chromium (Debian's package) with the flags this closed network needs; its
    standard output (the DOM, with --dump-dom)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "headless Chromium is needed (Debian package chromium; scripts/test.sh)"
    profile = os.path.join(workdir, "chromium-profile")
    return subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic"]
        + ["--no-first-run", "--disable-background-networking", "--disable-sync"]
        + ["--disable-component-update", f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=90,
    ).stdout


def test_mqttgw_status_and_the_status_page(p: support.Pki, workdir: str, broker: int) -> None:
    """``mqttgw status`` (exit 0, then 2 for a listener in a bad state) and the status page
    in headless Chromium, with the bad listener shown first, in red."""
    good, bad, admin = support.free_port(), support.free_port(), support.free_port()
    dead = support.free_port()  # nothing listens there: the CRL source fails
    conf = support.listener_conf("good", good, broker, p)
    conf += support.listener_conf(
        "bad",
        bad,
        broker,
        p,
        {"enable_crl_cache": "true", "crl_cache_urls": f"http://127.0.0.1:{dead}/ca.crl"},
    )
    conf += f"admin.listen = {admin}\n"
    gw = support.start_gateway(workdir, conf, ready="fetch failed")
    try:
        support.wait_until(lambda: "crl bad: ready" in gw.log())
        mqttgw = os.path.join(support.BIN, "mqttgw")
        result = support.run([mqttgw, "status", "--admin", f"http://127.0.0.1:{admin}"])
        assert result.returncode == 2, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        # The header tells the truth: every device of "bad" would be refused (no CRL).
        assert "NOT READY: bad: CA " in lines[0] and "no CRL held" in lines[0], lines[0]
        assert lines[2].startswith("ERROR    bad: every device would be refused: CA ")
        (source,) = [
            x for x in lines if x.startswith("ERROR    bad: no CRL from http://127.0.0.1:")
        ]
        assert "connection refused" in source
        assert "None" not in result.stdout  # no raw Python value where a person reads
        assert any("server certificate CN=localhost" in x and "days left" in x for x in lines)
        assert any(line.startswith("listener good ") for line in lines)
        as_json = support.run([mqttgw, "status", "--json", "--admin", f"http://127.0.0.1:{admin}"])
        assert json.loads(as_json.stdout)["listeners"][1]["name"] == "bad"
        nothing = support.run([mqttgw, "status", "--admin", f"http://127.0.0.1:{dead}"])
        assert nothing.returncode == 3 and "no answer from" in nothing.stderr

        dom = chromium(workdir, "--dump-dom", f"http://127.0.0.1:{admin}/")
        assert "<h1>mqttgw " in dom and "not ready: bad: CA " in dom, dom[:2000]
        problems = dom.index('id="problems"')
        assert dom.index('class="problem-error"') > problems
        assert "ERROR bad: no CRL from http://127.0.0.1:" in dom
        assert dom.index("problem-error") < dom.index("Listener good")
        assert "Listener bad" in dom and "Listener good" in dom
        assert 'href="/metrics"' in dom and 'href="/status"' in dom  # the data behind
        assert "auto-refresh" in dom and 'http-equiv="refresh"' not in dom  # off unless asked

        # A few connections, then an hour's charts with data (a sample every 10 s).
        for i in range(3):
            ctx = support.client_context(p, p.client(f"chart-{i}"))
            assert connect(good, ctx, f"chart-{i}") == ACCEPTED
        support.wait_until(
            lambda: sum(json.loads(http(admin, "/status")[2])["history"]["accepted"]) >= 3,
            40,
            what="the connections in the history",
        )
        shot = os.path.join(workdir, "page.png")
        chromium(
            workdir, "--window-size=1200,1400", f"--screenshot={shot}", f"http://127.0.0.1:{admin}/"
        )
        with open(shot, "rb") as f:
            png = f.read()
        assert png.startswith(b"\x89PNG") and len(png) > 20_000  # a rendered page, not blank
        dom = chromium(workdir, "--dump-dom", f"http://127.0.0.1:{admin}/?refresh=10")
        charts = re.findall(r"<svg[^>]*aria-label=\"([^\"]+)\"", dom)
        assert "Sessions relayed and connections refused" in charts, charts
        assert "TLS handshakes" in charts and "Connections open" in charts
        relayed = re.search(r"stroke=\"#1e7e34\"[^>]*points=\"([^\"]+)\"", dom)
        assert relayed and len(relayed.group(1).split()) >= 1, dom[:3000]
        assert 'http-equiv="refresh" content="10"' in dom  # asked for: every 10 s
        assert "(0 s ago)" in dom or " s ago)" in dom  # times relative beside absolute ones
    finally:
        gw.stop()


def test_ready_false_while_no_crl_is_held(p: support.Pki, workdir: str, broker: int) -> None:
    """The CA's CRL server is down at start: the port accepts (the policy refuses every
    device), /ready answers 503 with the reason; once a CRL arrives, 200."""
    crls = CrlHttpServer()
    crls.serve("/ca.crl", 503)
    crls.serve("/root.crl", 503)
    port, admin = support.free_port(), support.free_port()
    token = write_token(workdir)
    conf = support.listener_conf(
        "x",
        port,
        broker,
        p,
        {
            "enable_crl_cache": "true",
            "crl_cache_urls": f"{crls.url('/ca.crl')}, {crls.url('/root.crl')}",
        },
    )
    conf += f"admin.listen = {admin}\nadmin.token_file = {token}\nadmin.open_read = true\n"
    gw = support.start_gateway(workdir, conf)
    try:
        support.wait_until(lambda: "crl x: ready" in gw.log(), what="the first round")
        code, _, body = http(admin, "/ready")
        assert code == 503 and b"not ready: x: CA " in body and b"no CRL held" in body, body
        assert metrics(admin)[("mqttgw_ready", ())] == 0
        crls.serve("/ca.crl", 200, crl_der(p.inter, []))
        crls.serve("/root.crl", 200, crl_der(p.root, []))
        assert http(admin, "/refresh", "POST", token=TOKEN)[0] == 200
        support.wait_until(lambda: http(admin, "/ready")[0] == 200, 15, what="ready")
        assert metrics(admin)[("mqttgw_ready", ())] == 1
    finally:
        gw.stop()
        crls.stop()


def test_systemd_unit_verifies(workdir: str) -> None:
    """conf/systemd/mqttgw.service passes systemd-analyze verify (with the binaries of this
    environment in place of /usr/local/bin)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "conf", "systemd", "mqttgw.service")) as f:
        unit = f.read().replace("/usr/local/bin/", support.BIN + "/")
    path = os.path.join(workdir, "mqttgw.service")
    with open(path, "w") as f:
        f.write(unit)
    result = support.run([analyze, "verify", path], timeout=60)
    assert result.returncode == 0 and "mqttgw.service" not in result.stderr, result.stderr
    for option in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "NoNewPrivileges=yes"):
        assert option in unit
    assert "ProtectSystem=strict" in unit and "User=mqttgw" in unit


def test_sd_notify_ready_reloading_stopping(p: support.Pki, workdir: str, broker: int) -> None:
    """Under a Type=notify unit: READY=1 once listening, RELOADING=1 then READY=1 around a
    reload, STOPPING=1 at stop, on the socket systemd names in NOTIFY_SOCKET."""

    path = os.path.join(workdir, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(15)
    os.environ["NOTIFY_SOCKET"] = path
    try:
        gw = support.start_gateway(
            workdir, support.listener_conf("n", support.free_port(), broker, p)
        )
    finally:
        del os.environ["NOTIFY_SOCKET"]
    try:
        assert sock.recv(100) == b"READY=1"
        gw.proc.send_signal(signal.SIGHUP)
        assert sock.recv(100) == b"RELOADING=1"
        assert sock.recv(100) == b"READY=1"
    finally:
        gw.stop()
    assert sock.recv(100) == b"STOPPING=1"
    sock.close()


def test_prometheus_alert_rules_name_exported_metrics(
    p: support.Pki, workdir: str, broker: int
) -> None:
    """Every mqttgw_* metric the sample alert rules use is exported (a live scrape of a
    gateway with CRL checking and OCSP stapling on); promtool checks the file where it is
    installed."""
    from gateway.testing.crl import CrlHttpServer, crl_der
    from gateway.testing.ocsp import OcspWorld

    os.makedirs(os.path.join(workdir, "ocsp"))
    world = OcspWorld(os.path.join(workdir, "ocsp"))
    http_server = CrlHttpServer()
    http_server.serve("/d.crl", 200, crl_der(world.p.inter, []))
    http_server.serve("/r.crl", 200, crl_der(world.p.root, []))
    port, admin = support.free_port(), support.free_port()
    conf = (
        world.conf(
            "full",
            port,
            broker,
            world.server_cert("srv"),
            enable_crl_cache="true",
            crl_cache_urls=f"{http_server.url('/d.crl')},{http_server.url('/r.crl')}",
        )
        + f"admin.listen = {admin}\n"
    )
    gw = support.start_gateway(workdir, conf, ready="status=good")
    try:
        support.wait_until(lambda: "crl full: ready" in gw.log())
        code, _, body = http(admin, "/metrics")
        exported = set(re.findall(r"^# TYPE (\S+) ", body.decode(), re.M))
        samples = metrics(admin)
    finally:
        gw.stop()
        world.responder.stop()
        http_server.stop()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    rules_path = os.path.join(root, "conf", "prometheus", "mqttgw-alerts.yml")
    with open(rules_path) as f:
        used = set(re.findall(r"\b(mqttgw_[a-z_]+)", f.read()))
    assert used
    for name in used:
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        assert name in exported or base in exported, f"{name} is used but not exported"
    assert any(k[0] == "mqttgw_crl_next_update_timestamp_seconds" for k in samples)
    assert samples[("mqttgw_ocsp_status", (("listener", "full"), ("status", "good")))] == 1
    promtool = shutil.which("promtool")
    if promtool is not None:
        result = support.run([promtool, "check", "rules", rules_path])
        assert result.returncode == 0, result.stdout + result.stderr


def test_reload_moves_the_admin_listener(p: support.Pki, workdir: str, broker: int) -> None:
    """admin.listen follows a reload (the new address bound first); an address that cannot
    be bound refuses the reload and the admin listener stays where it was."""
    first, second = support.free_port(), support.free_port()
    listener = support.listener_conf("a", support.free_port(), broker, p)
    gw = support.start_gateway(workdir, listener + f"admin.listen = {first}\n")
    conf_path = os.path.join(workdir, "gateway.conf")
    try:
        assert http(first, "/live")[0] == 200
        with open(conf_path, "w") as f:
            f.write(listener + f"admin.listen = {second}\n")
        gw.proc.send_signal(signal.SIGHUP)
        support.wait_until(lambda: "reload applied" in gw.log())
        assert f"admin listener on 127.0.0.1:{second}" in gw.log()
        assert http(second, "/live")[0] == 200
        assert not support.port_open(first)
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        try:
            with open(conf_path, "w") as f:
                f.write(listener + f"admin.listen = {taken.getsockname()[1]}\n")
            gw.proc.send_signal(signal.SIGHUP)
            support.wait_until(lambda: "reload refused" in gw.log())
            line = next(x for x in gw.log().splitlines() if "reload refused" in x)
            assert "admin.listen: cannot listen on 127.0.0.1:" in line, line
            assert http(second, "/live")[0] == 200
        finally:
            taken.close()
    finally:
        gw.stop()


def test_certificates_rotated_on_disk_are_served_without_a_signal(
    p: support.Pki, workdir: str, broker: int
) -> None:
    """watch_files: a certificate and key replaced by ``mv`` over the old files, and a
    Kubernetes-style secret whose ``..data`` symlink is swapped, are served from the next
    handshake (openssl s_client sees the new certificate) with no signal; a live session
    keeps going; a key that does not match its certificate is refused and the old material
    keeps serving; /status and /metrics count both."""
    plain_port, k8s_port, admin = (support.free_port() for _ in range(3))
    live = os.path.join(workdir, "live")
    os.makedirs(live)
    cert_path, key_path = pki.issue(p.inter, "localhost", server=True).write(live, "srv")
    # A Kubernetes secret volume: tls.crt -> ..data/tls.crt, ..data -> ..v1 (swapped whole).
    secret = os.path.join(workdir, "secret")
    os.makedirs(os.path.join(secret, "..v1"))
    pki.issue(p.inter, "localhost", server=True).write(os.path.join(secret, "..v1"), "tls")
    os.symlink("..v1", os.path.join(secret, "..data"))
    for name in ("tls.pem", "tls.key"):
        os.symlink(os.path.join("..data", name), os.path.join(secret, name))
    conf = support.listener_conf(
        "plain", plain_port, broker, p, {"certfile": cert_path, "keyfile": key_path}
    )
    k8s = {"certfile": os.path.join(secret, "tls.pem"), "keyfile": os.path.join(secret, "tls.key")}
    conf += support.listener_conf("k8s", k8s_port, broker, p, k8s)
    conf += f"watch_files = true\nwatch_files_interval = 500ms\nadmin.listen = {admin}\n"
    gw = support.start_gateway(workdir, conf, "gw-watch")
    device = p.client("watched")
    try:
        sub = _subscribe(plain_port, support.client_context(p, device), "rotation/news")
        first, k8s_first = (
            server_fingerprint(plain_port, p, device),
            server_fingerprint(k8s_port, p, device),
        )

        # 1. mv over the old files (as certbot's deploy hooks and most ACME clients do).
        staging = os.path.join(workdir, "staging")
        os.makedirs(staging)
        new_cert, new_key = pki.issue(p.inter, "localhost", server=True).write(staging, "srv")
        os.replace(new_key, key_path)
        os.replace(new_cert, cert_path)
        support.wait_until(
            lambda: server_fingerprint(plain_port, p, device) != first, 20, what="new cert"
        )
        assert "files changed on disk:" in gw.log() and "reload applied" in gw.log()
        _publish(broker, "rotation/news", "after-rotation")
        assert _received(sub, "after-rotation")  # the live session was not touched

        # 2. The secret's ..data swapped to a new directory, atomically.
        os.makedirs(os.path.join(secret, "..v2"))
        pki.issue(p.inter, "localhost", server=True).write(os.path.join(secret, "..v2"), "tls")
        os.symlink("..v2", os.path.join(secret, "..data_tmp"))
        os.replace(os.path.join(secret, "..data_tmp"), os.path.join(secret, "..data"))
        support.wait_until(
            lambda: server_fingerprint(k8s_port, p, device) != k8s_first, 20, what="k8s swap"
        )

        # 3. A key that does not match the certificate: refused, the running one stays.
        served = server_fingerprint(plain_port, p, device)
        pki.issue(p.inter, "other", server=True).write(staging, "wrong")
        os.replace(os.path.join(staging, "wrong.key"), key_path)
        support.wait_until(lambda: "reload refused" in gw.log(), 20, what="the refusal")
        assert "does not match" in gw.log()
        assert server_fingerprint(plain_port, p, device) == served
        assert connect(plain_port, support.client_context(p, device), "still-in") == ACCEPTED
        files = json.loads(http(admin, "/status")[2])["files"]
        assert files["watched"] == 5 and files["applied"] >= 2 and files["refused"] >= 1
        m = metrics(admin)
        assert m[("mqttgw_file_reloads_total", (("result", "refused"),))] >= 1
        sub.close()
    finally:
        gw.stop()


def test_a_drain_is_paced_and_tells_mqtt5_devices_where_to_go(
    p: support.Pki, workdir: str, broker: int
) -> None:
    """``mqttgw drain`` (POST /drain): readiness turns false at once while the port still
    accepts for drain_ready_delay; then the sessions (from 16 addresses) are closed at
    drain_rate, oldest first, spread over seconds rather than all at once; the MQTT 5 ones
    hear DISCONNECT 0x9C with the Server Reference (the policy edge is off here; paho-mqtt
    reads it too), the 3.1.1 ones a clean close; the gateway exits 0."""
    import selectors

    port, admin = support.free_port(), support.free_port()
    token_file = write_token(workdir)
    conf = support.listener_conf("main", port, broker, p)
    conf += f"admin.listen = {admin}\nadmin.token_file = {token_file}\n"
    conf += "shutdown_drain = 5s\ndrain_rate = 40\ndrain_ready_delay = 1s\n"
    conf += "drain_server_reference = mqtt2.example.com:8883\n"
    gw = support.start_gateway(workdir, conf, "gw-drain")
    ctx = support.client_context(p, p.client("drained"))
    sockets: dict[Any, tuple[int, int]] = {}  # socket -> (order, level)
    try:
        for i in range(80):
            raw = socket.create_connection(
                ("127.0.0.1", port), timeout=10, source_address=(f"127.0.0.{10 + i % 16}", 0)
            )
            s = ctx.wrap_socket(raw, server_hostname="localhost")
            level = 5 if i % 4 == 0 else 4
            s.sendall(support.connect_packet(f"drained-{i}", level=level, keep_alive=0))
            head = support.read_exact(s, 2)
            assert head[0] == 0x20 and support.read_exact(s, head[1])[1] == 0
            sockets[s] = (i, level)
        # And paho-mqtt, as an MQTT 5 device library reads the drain's DISCONNECT.
        import paho.mqtt.client as paho

        told: list[tuple[int, Any]] = []
        pahos = []
        for i in range(2):
            client = paho.Client(
                paho.CallbackAPIVersion.VERSION2, client_id=f"paho-{i}", protocol=paho.MQTTv5
            )
            client.tls_set_context(ctx)
            client.on_disconnect = lambda c, u, f, rc, props: told.append((rc.value, props))
            client.connect("localhost", port, keepalive=60)
            client.loop_start()
            pahos.append(client)
        support.wait_until(lambda: all(c.is_connected() for c in pahos), 10, what="paho")
        drained = support.run(
            [os.path.join(support.BIN, "mqttgw"), "drain", "--admin", f"http://127.0.0.1:{admin}"]
            + ["--token-file", token_file]
        )
        asked = time.monotonic()
        assert drained.returncode == 0, drained.stderr
        assert "draining 82 session(s)" in drained.stdout
        code, _, body = http(admin, "/ready", token=TOKEN)
        assert code == 503 and b"draining" in body
        assert connect(port, ctx, "late-but-in") == ACCEPTED  # the port still accepts
        closed: dict[int, float] = {}
        said: dict[int, bytes] = {}
        selector = selectors.DefaultSelector()
        for s in sockets:
            s.setblocking(False)
            selector.register(s, selectors.EVENT_READ)
        deadline = time.monotonic() + 20
        while len(closed) < len(sockets) and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=1):
                s = key.fileobj
                order, level = sockets[s]
                try:
                    data = s.recv(4096)
                except ssl.SSLWantReadError:
                    continue
                except (ssl.SSLError, OSError):
                    data = b""
                if data:
                    said[order] = said.get(order, b"") + data
                    continue
                closed[order] = time.monotonic() - asked
                selector.unregister(s)
                s.close()  # as a device does: the gateway's side then ends at once
        assert len(closed) == 80, sorted(closed)
        first, last = min(closed.values()), max(closed.values())
        assert first >= 0.9, first  # not before drain_ready_delay
        assert last - first >= 1.2, (first, last)  # 80 at 40 a second: about two seconds
        order = sorted(closed, key=lambda i: closed[i])
        assert max(order[:20]) < 30, order  # the oldest first
        reference = b"mqtt2.example.com:8883"
        for i, level in sorted(sockets.values()):
            if level == 5:
                assert said.get(i, b"")[:3] == b"\xe0" + bytes((len(reference) + 5,)) + b"\x9c"
                assert said[i].endswith(b"\x1c" + len(reference).to_bytes(2, "big") + reference)
            else:
                assert said.get(i, b"") == b""
        assert gw.proc.wait(15) == 0
        assert "drain asked (POST /drain)" in gw.log()
        support.wait_until(lambda: len(told) == 2, 10, what="paho's disconnects")
        for code, props in told:
            assert code == 0x9C and props.ServerReference == "mqtt2.example.com:8883"
        for client in pahos:
            client.loop_stop()
    finally:
        for s in sockets:
            s.close()
        gw.stop()
