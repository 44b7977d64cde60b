"""No refused connection across a restart or an upgrade: a client opens a new TLS+CONNECT
every 5 ms while the gateway is replaced, by the --takeover hand-over (one process, and
workers = 2) and by a restart under systemd-style socket activation (a real listening
socket passed in as descriptor 3); every CONNECT is answered, none refused or reset."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from gateway import testing as support

pytestmark = pytest.mark.integration

ACCEPTED = b"\x20\x02\x00\x00"


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> support.Pki:
    return support.make_pki(str(tmp_path_factory.mktemp("pki")))


class Devices:
    """A device connecting every 5 ms (TLS, CONNECT, CONNACK, close), counting outcomes."""

    def __init__(self, port: int, p: support.Pki) -> None:
        self.port, self.ctx = port, support.client_context(p, p.client("restless"))
        self.answered = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> Devices:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set() and i < 5000:
            i += 1
            try:
                with support.tls_connect(self.port, self.ctx, timeout=15) as s:
                    s.sendall(support.connect_packet(f"restless-{i}", keep_alive=0))
                    got = support.read_exact(s, 4)
                if got == ACCEPTED:
                    self.answered += 1
                else:
                    self.failed.append(repr(got))
            except OSError as e:
                self.failed.append(repr(e))
            time.sleep(0.005)

    def wait_for(self, count: int) -> None:
        target = self.answered + count
        support.wait_until(lambda: self.answered >= target, 20, what=f"{count} more CONNECTs")


@pytest.mark.parametrize("workers", ["", "workers = 2\n"], ids=["one-process", "workers"])
def test_a_takeover_refuses_no_connection(
    p: support.Pki, workdir: str, broker: int, workers: str
) -> None:
    """The new gateway takes the listening sockets (SCM_RIGHTS), accepts, and tells the old
    one to drain; the old exits 0; not one connection refused in between."""
    port, admin = support.free_port(), support.free_port()
    conf = support.listener_conf("m", port, broker, p) + workers
    conf += f"takeover_socket = {workdir}/takeover.sock\nadmin.listen = {admin}\n"
    ready = "serving" if workers else "listener "
    old = support.start_gateway(workdir, conf, "old", ready=ready)
    new = None
    try:
        with Devices(port, p) as devices:
            devices.wait_for(20)
            new = support.start_gateway(workdir, conf, "new", ready, plugin_args=["--takeover"])
            assert old.proc.wait(20) == 0
            devices.wait_for(40)  # served by the new one alone
        assert devices.failed == [], devices.failed[:5]
        assert "handed to a new gateway" in old.log() and "the old gateway drains" in new.log()
        assert support.port_open(admin)  # the admin listener was handed over too
        # And the new one can be taken over in turn: the takeover socket went with it.
        assert os.path.exists(f"{workdir}/takeover.sock")
    finally:
        old.stop()
        if new is not None:
            new.stop()


def test_a_restart_under_socket_activation_refuses_no_connection(
    p: support.Pki, workdir: str, broker: int
) -> None:
    """systemd holds the listening socket (here: the test does) and passes it to each
    gateway it starts; while one stops and the next starts, connections wait in the
    backlog, and every CONNECT is answered."""
    port = support.free_port()
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listening.bind(("127.0.0.1", port))
    listening.listen(1024)
    conf = support.listener_conf("m", port, broker, p)
    first = support.start_gateway(workdir, conf, "first", activate=listening)
    second = None
    try:
        with Devices(port, p) as devices:
            devices.wait_for(20)
            first.stop()  # as systemctl restart does: stop, then start
            second = support.start_gateway(workdir, conf, "second", activate=listening)
            devices.wait_for(20)
        assert devices.failed == [], devices.failed[:5]
    finally:
        first.stop()
        if second is not None:
            second.stop()
        listening.close()
