"""mqttgw's own TLS transport (tls_io = transport, the default and only way: TLS in memory
BIOs the transport owns): the cases a transport of its own must get right, against real
clients (a handshake one byte at a time, resets and half-closes in the handshake, idle
connections closed at once). Every other test runs on it too."""

from __future__ import annotations

import os
import socket
import ssl
import struct
import time

import pytest

from gateway import testing as support

pytestmark = pytest.mark.integration

ACCEPTED = b"\x20\x02\x00\x00"


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> support.Pki:
    return support.make_pki(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def io() -> str:
    """The TLS path: mqttgw's own transport owning its memory BIOs (tls_io = transport,
    what auto, the default, is)."""
    return "transport"


def _gateway(
    workdir: str, p: support.Pki, broker: int, io: str = "transport"
) -> tuple[support.Process, int]:
    port = support.free_port()
    conf = support.listener_conf("s", port, broker, p, {"tls_io": io})
    conf += "max_conn_rate_per_ip = 0\nmax_conn_rate = 0\n"
    return support.start_gateway(workdir, conf), port


def _dribble(port: int, ctx: ssl.SSLContext, payload: bytes) -> bytes:
    """A TLS client over a plain socket that sends every byte of its handshake and of
    ``payload`` in a send of its own; returns the first 4 bytes the server answers."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")

    def flush() -> None:
        for byte in outgoing.read():
            sock.sendall(bytes([byte]))
            time.sleep(0.0005)

    try:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                flush()
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed in the handshake") from None
                incoming.write(data)
        flush()
        tls.write(payload)
        flush()
        answer = b""
        while len(answer) < 4:
            try:
                answer += tls.read(4 - len(answer))
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                if not data:
                    break
                incoming.write(data)
        return answer
    finally:
        sock.close()


def test_a_handshake_and_a_connect_one_byte_at_a_time(
    p: support.Pki, workdir: str, broker: int, io: str
) -> None:
    """A ClientHello (and everything after it) in one-byte TCP segments: OpenSSL reads
    what the socket has each time and waits for more; the device gets in. TLS 1.3 and 1.2."""
    gw, port = _gateway(workdir, p, broker, io)
    try:
        for version in ("1.3", "1.2"):
            ctx = support.client_context(p, p.client(f"dribble-{version}"), version)
            connect = support.connect_packet(f"dribble-{version}")
            assert _dribble(port, ctx, connect) == ACCEPTED, version
        assert "Traceback" not in gw.log()
    finally:
        gw.stop()


def test_resets_and_half_closes_in_the_handshake(
    p: support.Pki, workdir: str, broker: int, io: str
) -> None:
    """A peer that resets in the middle of its handshake, one that half-closes after its
    ClientHello, one that closes before saying anything: each ends cleanly (a refusal line,
    no traceback), and the next device gets in."""
    gw, port = _gateway(workdir, p, broker, io)
    try:
        ctx = support.client_context(p, p.client("half"))
        for how in ("reset", "half-close", "silent"):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            if how != "silent":
                incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
                tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
                try:
                    tls.do_handshake()
                except ssl.SSLWantReadError:
                    pass
                hello = outgoing.read()
                sock.sendall(hello[: len(hello) // 2] if how == "reset" else hello)
            if how == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif how == "half-close":
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(5)
                while sock.recv(65536):  # the server's flight, then its close
                    pass
            sock.close()
        with support.tls_connect(port, ctx) as s:
            s.sendall(support.connect_packet("after-resets"))
            assert support.read_exact(s, 4) == ACCEPTED
        log = gw.log()
        assert "Traceback" not in log and "Unhandled" not in log, log
        assert log.count("refused s ") >= 2
    finally:
        gw.stop()


def test_idle_connections_then_all_closed(
    p: support.Pki, workdir: str, broker: int, io: str
) -> None:
    """300 relayed sessions held idle, then all closed by their devices: every session
    ends, and the gateway's descriptors are back where they were."""
    gw, port = _gateway(workdir, p, broker, io)
    try:
        ctx = support.client_context(p, p.client("idle"))
        with support.tls_connect(port, ctx) as s:  # warm up
            s.sendall(support.connect_packet("idle-warm", keep_alive=0))
            assert support.read_exact(s, 4) == ACCEPTED
        support.wait_until(lambda: "session ended s" in gw.log())
        before = len(os.listdir(f"/proc/{gw.pid}/fd"))
        held = []
        for i in range(300):
            s = support.tls_connect(port, ctx)
            s.sendall(support.connect_packet(f"idle-{i}", keep_alive=0))
            assert support.read_exact(s, 4) == ACCEPTED
            held.append(s)
        during = len(os.listdir(f"/proc/{gw.pid}/fd"))
        assert during >= before + 600  # each: the device and the broker
        for s in held:
            s.close()
        support.wait_until(lambda: gw.log().count("session ended s") >= 301, 30, what="ends")
        support.wait_until(lambda: len(os.listdir(f"/proc/{gw.pid}/fd")) <= before, 15)
    finally:
        gw.stop()


class _MemoryClient:
    """A TLS client in memory BIOs over a plain socket: what arrives, and when, is seen."""

    def __init__(self, port: int, ctx: ssl.SSLContext, session: object = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(
            self.incoming, self.outgoing, server_hostname="localhost", session=session
        )
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                self._receive()
        self.sock.sendall(self.outgoing.read())  # (TLS 1.3: the client's Finished)

    def _receive(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        self.incoming.write(data)
        return data

    def silent_for(self, seconds: float) -> bool:
        self.sock.settimeout(seconds)
        try:
            return not self.sock.recv(65536, socket.MSG_PEEK)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(10)

    def read_until_closed(self) -> bytes:
        """Everything decrypted until the server's close_notify (tickets read on the way)."""
        data = b""
        while True:
            try:
                chunk = self.tls.read(65536)
                if not chunk:  # (the close_notify, as SSLObject reports it)
                    return data
                data += chunk
            except ssl.SSLWantReadError:
                try:
                    self._receive()
                except ConnectionError:
                    return data
            except ssl.SSLZeroReturnError:
                return data

    def exchange(self, payload: bytes, n: int) -> bytes:
        self.tls.write(payload)
        self.sock.sendall(self.outgoing.read())
        answer = b""
        while len(answer) < n:
            try:
                answer += self.tls.read(n - len(answer))
            except ssl.SSLWantReadError:
                self._receive()
        return answer


def test_tls13_tickets_leave_as_the_handshake_ends(
    p: support.Pki, workdir: str, broker: int
) -> None:
    """TLS 1.3 tickets are sent as the handshake ends, not held for the CONNACK: that send
    is what acknowledges the client's Finished, and a client whose CONNECT follows it
    otherwise waits for a delayed ACK (Nagle): held, 300 connects took 26 s instead of 1.
    The ticket resumes the next connection; a device that speaks no MQTT has its ticket
    and is closed; TLS 1.2 (whose last flight the client waits for) gets in."""
    port = support.free_port()
    conf = support.listener_conf("t", port, broker, p)
    gw = support.start_gateway(workdir, conf + "max_conn_rate_per_ip = 0\n")
    try:
        ctx = support.client_context(p, p.client("ticket"))
        first = _MemoryClient(port, ctx)
        assert not first.silent_for(5), "no ticket after the handshake"
        assert first.exchange(support.connect_packet("ticket-1"), 4) == ACCEPTED
        assert first.tls.session is not None and first.tls.session.has_ticket
        first.sock.close()

        again = _MemoryClient(port, ctx, session=first.tls.session)
        assert again.tls.session_reused
        assert again.exchange(support.connect_packet("ticket-2"), 4) == ACCEPTED
        again.sock.close()

        other = _MemoryClient(port, ctx)  # not MQTT: closed, no record sent to it
        other.tls.write(b"GET / HTTP/1.1\r\n\r\n")
        other.sock.sendall(other.outgoing.read())
        assert other.read_until_closed() == b""
        assert other.tls.session is not None and other.tls.session.has_ticket
        other.sock.close()

        tls12 = support.client_context(p, p.client("ticket-12"), "1.2")
        old = _MemoryClient(port, tls12)
        assert old.tls.version() == "TLSv1.2"
        assert old.exchange(support.connect_packet("ticket-3"), 4) == ACCEPTED
        old.sock.close()
        assert "Traceback" not in gw.log()
    finally:
        gw.stop()
