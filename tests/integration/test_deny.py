"""deny_file against a real mosquitto: a listed device is refused at the handshake, a
resumed session included, with nothing reaching the broker; a reload that lists a live
device closes its session (MQTT 5: DISCONNECT 0x87 first) and leaves the others alone."""

from __future__ import annotations

import os
import signal
import socket
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from gateway import testing as support

pytestmark = pytest.mark.integration

ACCEPTED = b"\x20\x02\x00\x00"


def _fingerprint(pair: tuple[str, str]) -> str:
    with open(pair[0], "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    return ":".join(digest[i : i + 2] for i in range(0, 64, 2))  # as openssl prints it


def _serial(pair: tuple[str, str]) -> str:
    with open(pair[0], "rb") as f:
        return format(x509.load_pem_x509_certificate(f.read()).serial_number, "X")


def _closed(sock: ssl.SSLSocket) -> bool:
    try:
        return sock.recv(10) == b""
    except (ConnectionError, ssl.SSLError):
        return True


def _refused(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None) -> bool:
    """Whether the gateway closes this device's connection before any CONNACK."""
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
        sock.sendall(support.connect_packet("refused-device"))
        return _closed(sock)
    except (ConnectionError, ssl.SSLError):
        return True


def test_listed_devices_are_refused_and_a_reload_closes_their_live_sessions(
    pki_dir: support.Pki, workdir: str
) -> None:
    p = pki_dir
    listed, victim, bystander = p.client("listed"), p.client("victim"), p.client("bystander")
    deny = os.path.join(workdir, "deny")
    with open(deny, "w") as f:
        f.write(f"# taken out of service\nsha256 {_fingerprint(listed)}\n")
    broker, broker_port = support.start_mosquitto(workdir)
    port = support.free_port()
    conf = support.listener_conf("d", port, broker_port, p, {"deny_file": deny})
    gw = support.start_gateway(workdir, conf)
    try:
        assert _refused(port, support.client_context(p, listed))
        support.wait_until(lambda: "reason=deny_listed" in gw.log(), 10, what="the refusal")
        assert "deny_file: sha256" in gw.log()
        # The victim: a live MQTT 5 session, and a TLS 1.3 session to resume later.
        ctx = support.client_context(p, victim)
        live = support.tls_connect(port, ctx, timeout=15)
        live.sendall(support.connect_packet("victim-5", level=5))
        head = support.read_exact(live, 2)
        assert head[0] == 0x20 and support.read_exact(live, head[1])[1] == 0
        with support.tls_connect(port, ctx) as first:
            first.sendall(support.connect_packet("victim-first"))
            assert support.read_exact(first, 4) == ACCEPTED
            session = first.session
        other = support.tls_connect(port, support.client_context(p, bystander), timeout=15)
        other.sendall(support.connect_packet("bystander"))
        assert support.read_exact(other, 4) == ACCEPTED

        with open(deny, "a") as f:
            f.write(f"serial {_serial(victim)}\n")
        gw.proc.send_signal(signal.SIGHUP)
        support.wait_until(lambda: "reload applied" in gw.log(), 10, what="reload")
        assert "deny list" in gw.log()
        live.settimeout(10)
        assert support.read_exact(live, 4) == b"\xe0\x02\x87\x00"  # DISCONNECT: not authorized
        assert _closed(live)
        assert _refused(port, ctx, session)  # resumed: checked all the same
        assert _refused(port, ctx)
        other.sendall(b"\xc0\x00")  # PINGREQ: the bystander's session is untouched
        assert support.read_exact(other, 2) == b"\xd0\x00"
        other.close()
        broker_log = broker.log()
        assert "victim-first" in broker_log and "bystander" in broker_log
        assert "refused-device" not in broker_log  # nothing of theirs reached the broker
    finally:
        gw.stop()
        broker.stop()
