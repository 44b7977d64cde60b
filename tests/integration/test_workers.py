"""Several worker processes (``workers``): real twistd master, real workers, real clients from
several source addresses (127.0.0.x), CRLs made with `openssl ca` over HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import stat
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from gateway import testing as support
from tests.integration.test_crl import ACCEPTED, World

pytestmark = pytest.mark.integration
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(str(tmp_path_factory.mktemp("workers-world")))
    yield w
    w.http.stop()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    proc, port = support.start_mosquitto(str(tmp_path_factory.mktemp("workers-broker")))
    yield port
    proc.stop()


def connect_from(
    source: str, port: int, world: World, cert: tuple[str, str], client_id: str
) -> ssl.SSLSocket:
    """An MQTT session over mutual TLS from ``source`` (a 127.0.0.x address)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=15, source_address=(source, 0))
    s = support.client_context(world.p, cert).wrap_socket(raw, server_hostname="localhost")
    s.sendall(support.connect_packet(client_id))
    assert support.read_exact(s, 4) == ACCEPTED
    return s


def ws_connect_from(
    source: str,
    port: int,
    world: World,
    cert: tuple[str, str] | None,
    client_id: str,
) -> socket.socket:
    """An MQTT session over WebSocket from ``source``: over mutual TLS with ``cert``, else
    plain (a ws listener); its CONNACK read."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, BytesMessage, Message, Request

    s = socket.create_connection(("127.0.0.1", port), timeout=15, source_address=(source, 0))
    if cert is not None:
        s = support.client_context(world.p, cert).wrap_socket(s, server_hostname="localhost")
    ws = WSConnection(ConnectionType.CLIENT)
    s.sendall(ws.send(Request(host="localhost", target="/mqtt", subprotocols=["mqtt"])))
    got: list[object] = []
    while not any(isinstance(e, BytesMessage) for e in got):
        ws.receive_data(s.recv(4096))
        for event in ws.events():
            got.append(event)
            if isinstance(event, AcceptConnection):
                s.sendall(ws.send(Message(data=support.connect_packet(client_id))))
    (connack,) = [bytes(e.data) for e in got if isinstance(e, BytesMessage)]
    assert connack == ACCEPTED
    return s


def outcome_from(source: str, port: int, world: World, cert: tuple[str, str]) -> str:
    try:
        connect_from(source, port, world, cert, "probe").close()
        return "accepted"
    except (ssl.SSLError, ConnectionError, OSError, AssertionError) as e:
        return str(e)


def ping(s: ssl.SSLSocket) -> bool:
    try:
        s.sendall(b"\xc0\x00")
        return support.read_exact(s, 2) == b"\xd0\x00"
    except (OSError, ssl.SSLError):
        return False


def closed(s: ssl.SSLSocket) -> bool:
    try:
        return s.recv(10) == b""
    except (ConnectionError, ssl.SSLError):
        return True


def status(admin: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=10) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def serving_pids(gw: support.Process, count: int) -> dict[int, int]:
    """worker index -> pid, once ``count`` workers serve (from the log)."""

    def found() -> dict[int, int] | None:
        pids: dict[int, int] = {}
        for m in re.finditer(r"worker (\d+) \(pid (\d+)\) serving", gw.log()):
            pids[int(m.group(1))] = int(m.group(2))
        return pids if len(pids) >= count else None

    result: dict[int, int] = support.wait_until(found, 30, what=f"{count} workers serving")
    return result


def worker_of_accept(gw: support.Process, client_id: str) -> int:
    """The worker that logged the session's accepted line (workers' lines come in batches)."""
    pattern = rf"worker (\d+): accepted \S+ peer=\S+ .*client_id='{client_id}'"
    m = support.wait_until(lambda: re.search(pattern, gw.log()), 5, what=client_id)
    return int(m.group(1))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"


def test_workers_share_the_load_and_one_fetcher(world: World, broker: int, workdir: str) -> None:
    """workers = 4: connections from eight addresses land on every worker (address
    affinity: the same address always on the same worker); the CA sees one fetch per
    refresh, not four; /status adds the workers' counters up; a wss listener is served by
    the workers as well (MQTT over WebSocket from two addresses, on two workers), and a ws
    listener (plain WebSocket)."""
    device = world.p.client("spread")
    port, admin, wss, ws = (support.free_port() for _ in range(4))
    globals_ = f"workers = 4\nadmin.listen = {admin}\ncrl_cache.refresh_interval = 1s\n"
    globals_ += "stats_log_interval = 1s\n"
    world.http.hits.clear()
    conf = world.conf(port, broker, globals=globals_)
    conf += support.listener_conf("w", wss, broker, world.p, family="wss")
    conf += support.listener_conf("p", ws, broker, world.p, family="ws")
    gw = support.start_gateway(workdir, conf, ready="serving")
    try:
        serving_pids(gw, 4)
        sessions = [
            connect_from(f"127.0.0.{1 + i % 8}", port, world, device, f"spread-{i}")
            for i in range(16)
        ]
        gw.wait_log("client_id='spread-15'")
        workers = {i: worker_of_accept(gw, f"spread-{i}") for i in range(16)}
        assert set(workers.values()) == {0, 1, 2, 3}  # every worker serves
        for i in range(8):  # a device's address always meets the same worker
            assert workers[i] == workers[i + 8]
        assert all(ping(s) for s in sessions)
        support.wait_until(lambda: status(admin)["listeners"][0]["counters"]["active"] == 16, 10)
        doc = status(admin)
        assert [w["state"] for w in doc["workers"]] == ["serving"] * 4
        assert sum(w["active"] for w in doc["workers"]) == 16
        assert doc["ready"]["ok"] is True
        # The stats lines add the workers up, and say how each is doing.
        gw.wait_log("stats crl: active=16 accepted=16")
        gw.wait_log("stats workers: serving=4/4 restarts=0 active_per_worker=[")
        # One fetcher: with 1 s refreshes, six fetches of each CRL take about 6 s (four
        # fetchers would make them in 1.5 s). A slow machine only stretches the time, which
        # the bound follows, so it never fails a loaded CI run nor lets four fetchers pass.
        paths = ("/devices.crl", "/root.crl")
        before = dict(world.http.hits)
        started = time.monotonic()

        def fetched() -> dict[str, int]:
            return {p: world.http.hits.get(p, 0) - before.get(p, 0) for p in paths}

        support.wait_until(lambda: min(fetched().values()) >= 6, 30, what="six fetches of each CRL")
        elapsed, counts = time.monotonic() - started, fetched()
        for path in paths:
            assert counts[path] <= elapsed / 1.0 + 2, (counts, elapsed)
        web = [ws_connect_from(f"127.0.0.{i}", wss, world, device, f"ws-{i}") for i in (1, 2)]
        pattern = r"worker (\d+): accepted w peer=\S+ .*transport=wss .*client_id='ws-{}'"
        on = {
            support.wait_until(lambda i=i: re.search(pattern.format(i), gw.log()), 10).group(1)
            for i in (1, 2)
        }
        assert len(on) == 2  # two addresses, two workers
        web.append(ws_connect_from("127.0.0.3", ws, world, None, "plain-ws"))  # a ws listener
        plain = r"worker \d+: accepted p peer=127.0.0.3:\d+ .*transport=ws .*'plain-ws'"
        support.wait_until(lambda: re.search(plain, gw.log()), 10, what="the ws session")
        for s in sessions + web:
            s.close()
    finally:
        gw.stop()


def test_crl_update_reaches_every_worker(world: World, broker: int, workdir: str) -> None:
    """A device revoked at the CA: its live sessions on both workers are closed, and it is
    refused whichever worker it lands on; another device is untouched."""
    victim = world.p.client("workers-victim")
    bystander = world.p.client("workers-bystander")
    port = support.free_port()
    globals_ = "workers = 2\ncrl_cache.refresh_interval = 1s\n"
    gw = support.start_gateway(workdir, world.conf(port, broker, globals=globals_), ready="serving")
    try:
        serving_pids(gw, 2)
        # 127.0.0.1 and 127.0.0.2 land on different workers (address modulo 2).
        live = [connect_from(f"127.0.0.{i}", port, world, victim, f"victim-{i}") for i in (1, 2)]
        other = connect_from("127.0.0.3", port, world, bystander, "bystander")
        gw.wait_log("client_id='victim-2'")
        assert {worker_of_accept(gw, "victim-1"), worker_of_accept(gw, "victim-2")} == {0, 1}

        world.devices_ca.revoke(victim[0])
        world.publish()
        deadline = time.monotonic() + 10
        for s in live:
            assert closed(s)
        assert time.monotonic() < deadline
        for source in ("127.0.0.1", "127.0.0.2", "127.0.0.4"):
            assert "revoked" in outcome_from(source, port, world, victim)
        assert ping(other)
        support.wait_until(
            lambda: gw.log().count("certificate revoked by a revocation update") >= 2
        )
    finally:
        gw.stop()


def test_killed_worker_is_restarted(world: World, broker: int, workdir: str) -> None:
    """SIGKILL to one worker: it is logged and started again; the other worker's sessions
    stay up, and devices reach the new worker."""
    device = world.p.client("restart")
    port, admin = support.free_port(), support.free_port()
    globals_ = f"workers = 2\nadmin.listen = {admin}\n"
    gw = support.start_gateway(workdir, world.conf(port, broker, globals=globals_), ready="serving")
    try:
        pids = serving_pids(gw, 2)
        a = connect_from("127.0.0.2", port, world, device, "on-0")  # worker 0
        b = connect_from("127.0.0.1", port, world, device, "on-1")  # worker 1
        gw.wait_log("client_id='on-1'")
        assert worker_of_accept(gw, "on-0") == 0 and worker_of_accept(gw, "on-1") == 1
        os.kill(pids[0], signal.SIGKILL)
        gw.wait_log(f"worker 0 (pid {pids[0]}) killed by signal 9")
        assert closed(a)
        assert ping(b)  # the other worker's session is untouched
        support.wait_until(lambda: len(re.findall(r"worker 0 \(pid \d+\) serving", gw.log())) == 2)
        again = connect_from("127.0.0.2", port, world, device, "back-on-0")
        assert ping(again) and ping(b)
        doc = status(admin)
        assert doc["workers"][0]["restarts"] == 1 and doc["workers"][0]["state"] == "serving"
        assert doc["workers"][0]["pid"] != pids[0]
        # The terminal status lists the workers too (restart counted, problems none).
        out = support.run(
            [os.path.join(support.BIN, "mqttgw"), "status", "--admin", f"http://127.0.0.1:{admin}"]
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "workers 2/2" in out.stdout and "restarts 1" in out.stdout
        again.close()
        b.close()
    finally:
        gw.stop()


def test_sigterm_stops_every_process(world: World, broker: int, workdir: str) -> None:
    device = world.p.client("term")
    port = support.free_port()
    gw = support.start_gateway(
        workdir, world.conf(port, broker, globals="workers = 3\n"), ready="serving"
    )
    pids = serving_pids(gw, 3)
    s = connect_from("127.0.0.1", port, world, device, "term")
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(15) == 0
    assert closed(s)
    support.wait_until(lambda: not any(alive(p) for p in pids.values()), 5, what="workers gone")
    assert not support.port_open(port)
    assert "closed_by=shutdown" in gw.log()


def _reachable_by_others(path: str) -> bool:
    """Whether an unprivileged user can run ``path`` (every directory above searchable)."""
    path = os.path.realpath(path)
    parts = path.split("/")
    for i in range(2, len(parts)):
        if not os.stat("/".join(parts[:i])).st_mode & stat.S_IXOTH:
            return False
    return True


@pytest.mark.skipif(os.geteuid() != 0, reason="binding below 1024 and --uid need root")
def test_uid_gid_with_workers(world: World, broker: int, workdir: str) -> None:
    """twistd --uid/--gid: the master binds a port below 1024 as root; no worker runs as
    root; devices are served."""
    import sys

    if not _reachable_by_others(sys.executable):
        pytest.skip(f"{sys.executable} is not reachable by an unprivileged user here")
    import pwd

    nobody = pwd.getpwnam("nobody")
    port = next(p for p in range(900, 1000) if not support.port_open(p))
    os.chmod(workdir, 0o755)
    conf = world.conf(port, broker, globals="workers = 2\n")
    gw = support.start_gateway(
        workdir,
        conf,
        ready="serving",
        extra_args=[f"--uid={nobody.pw_uid}", f"--gid={nobody.pw_gid}"],
    )
    try:
        pids = serving_pids(gw, 2)
        for pid in [gw.pid, *pids.values()]:
            with open(f"/proc/{pid}/status") as f:
                uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", f.read(), re.M)
            assert uids is not None
            assert {int(u) for u in uids.groups()} == {nobody.pw_uid}
        s = connect_from("127.0.0.1", port, world, world.p.client("low-port"), "low-port")
        assert ping(s)
        s.close()
    finally:
        gw.stop()


def test_workers_staple_the_masters_response(broker: int, workdir: str) -> None:
    """OCSP with workers: the master asks the responder, every worker staples the response
    (`openssl s_client -status`), from the first connection a worker accepts."""
    from gateway.testing.ocsp import OcspWorld

    os.makedirs(os.path.join(workdir, "ocsp"))
    world = OcspWorld(os.path.join(workdir, "ocsp"))
    try:
        port = support.free_port()
        conf = world.conf(
            "w",
            port,
            broker,
            world.server_cert("srv-workers"),
            globals="workers = 2\nworker_affinity = kernel\n",
        )
        gw = support.start_gateway(workdir, conf, ready="serving")
        try:
            serving_pids(gw, 2)
            cert = world.p.client("ocsp-workers")
            for _ in range(6):  # spread over both workers by the kernel's hash
                result = support.s_client(port, world.p.ca_file, cert, "1.3", "-status")
                out = result.stdout + result.stderr
                assert "OCSP Response Status: successful" in out and "Cert Status: good" in out
            assert gw.log().count("ocsp w: updated") == 1  # asked once, by the master
        finally:
            gw.stop()
    finally:
        world.responder.stop()


def test_haproxy_in_front_of_two_instances(world: World, broker: int, workdir: str) -> None:
    """The scale-out recipe as shipped (conf/haproxy/mqttgw-front.cfg, addresses replaced):
    HAProxy spreads devices over two mqttgw instances (PROXY v2, health from /ready); one
    instance stopped, new devices all reach the other."""
    import shutil
    import subprocess

    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    assert os.path.exists(haproxy), "HAProxy is needed (Debian package haproxy)"
    front = support.free_port()
    gws, ports, admins = [], [], []
    token = os.path.join(workdir, "admin.token")
    with open(token, "w") as f:
        f.write("0123456789abcdef0123456789abcdef\n")
    os.chmod(token, 0o600)
    for i in (1, 2):
        port, admin = support.free_port(), support.free_port()
        conf = world.conf(
            port,
            broker,
            name="external",
            proxy_protocol="true",
            globals=(
                f"admin.listen = 127.0.0.1:{admin}\nadmin.token_file = {token}\n"
                "admin.open_read = true\nworkers = 2\n"
            ),
        )
        gws.append(support.start_gateway(workdir, conf, f"gw{i}", ready="serving"))
        ports.append(port)
        admins.append(admin)
    with open(os.path.join(ROOT, "conf", "haproxy", "mqttgw-front.cfg")) as f:
        recipe = f.read()
    recipe = recipe.replace("bind :8883", f"bind 127.0.0.1:{front}")
    recipe = recipe.replace("inter 2s", "inter 300ms").replace("maxconn 200000", "maxconn 2000")
    for i in (1, 2):
        recipe = recipe.replace(
            f"10.0.0.1{i}:8883 check port 9180",
            f"127.0.0.1:{ports[i - 1]} check port {admins[i - 1]}",
        )
    cfg = os.path.join(workdir, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(recipe)
    lb = subprocess.Popen(
        [haproxy, "-f", cfg, "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        support.wait_until(lambda: support.port_open(front), what="haproxy")
        device = world.p.client("behind-lb")
        time.sleep(1.0)  # the first health checks
        held = [
            connect_from(f"127.0.0.{10 + i}", front, world, device, f"lb-{i}") for i in range(8)
        ]
        for gw in gws:
            gw.wait_log("client_id='lb-")
        # PROXY v2: each instance logs the device's address, not HAProxy's.
        assert "peer=127.0.0.10:" in gws[0].log() + gws[1].log()
        gws[0].proc.send_signal(signal.SIGTERM)
        assert gws[0].proc.wait(15) == 0
        later = [
            connect_from(f"127.0.0.{30 + i}", front, world, device, f"after-{i}") for i in range(8)
        ]
        assert all(ping(s) for s in later)
        support.wait_until(lambda: gws[1].log().count("client_id='after-") >= 8)
        assert "client_id='after-" not in gws[0].log()  # it had stopped: its log is final
        for s in held + later:
            s.close()
    finally:
        lb.terminate()
        lb.wait(10)
        for gw in gws:
            gw.stop()
