"""CRL checking end to end: openssl-made CRLs over HTTP, the gateway under twistd, real clients."""

from __future__ import annotations

import datetime
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from gateway import testing as support
from gateway.demo import pki
from gateway.testing.crl import CrlHttpServer, OpensslCA
from tests.unit.test_crl_core import make_crl, pem

pytestmark = pytest.mark.integration


class World:
    """A PKI whose devices CA and root CA publish CRLs with `openssl ca`, served over HTTP."""

    def __init__(self, directory: str, key_kind: str = "ec") -> None:
        self.dir = directory
        self.p = support.make_pki(directory, key_kind)
        self.devices_ca = OpensslCA.create(os.path.join(directory, "devices-ca"), self.p.inter)
        self.root_ca = OpensslCA.create(os.path.join(directory, "root-ca"), self.p.root)
        self.http = CrlHttpServer()
        self.publish()

    def publish(self) -> None:
        for name, ca in (("devices", self.devices_ca), ("root", self.root_ca)):
            path = os.path.join(self.dir, f"{name}.crl.pem")
            with open(path, "wb") as f:
                f.write(ca.gencrl())
            self.http.serve_file(f"/{name}.crl", path)

    def url(self, name: str) -> str:
        return self.http.url(f"/{name}.crl")

    def conf(self, port: int, broker: int, name: str = "crl", **extra: str) -> str:
        # Both CRLs: every certificate below the trust anchor is checked (crl_check_all).
        urls = f"{self.url('devices')},{self.url('root')}"
        opts = {"enable_crl_cache": "true", "crl_cache_urls": urls}
        globals_ = extra.pop("globals", "crl_cache.refresh_interval = 1s\n")
        opts.update(extra)
        return support.listener_conf(name, port, broker, self.p, opts) + globals_


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(str(tmp_path_factory.mktemp("crl-world")))
    yield w
    w.http.stop()


def mqtt_connect(
    port: int, p: support.Pki, cert: tuple[str, str], tls: str = "1.3", level: int = 4
) -> bytes | str:
    """CONNECT over TLS; the CONNACK bytes, or the error text if TLS refused us."""
    try:
        with support.tls_connect(port, support.client_context(p, cert, tls)) as s:
            s.sendall(support.connect_packet("crl-client", level=level))
            return support.read_exact(s, 5 if level == 5 else 4)
    except (ssl.SSLError, ConnectionError, OSError) as e:
        return str(e)


ACCEPTED = b"\x20\x02\x00\x00"


def paho_outcome(port: int, p: support.Pki, cert: tuple[str, str], tls: str) -> str:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"paho-{tls}")
    client.tls_set_context(support.client_context(p, cert, tls))
    result: list[str] = []
    done = threading.Event()
    client.on_connect = lambda c, u, f, rc, props=None: (
        result.append(f"connected {rc}"),
        done.set(),
    )
    client.on_disconnect = lambda c, u, f, rc, props=None: (
        result.append(f"disconnected {rc}"),
        done.set(),
    )
    try:
        client.connect("127.0.0.1", port)
        client.loop_start()
        done.wait(10)
    except (ssl.SSLError, OSError) as e:
        result.append(f"refused {e}")
    finally:
        client.loop_stop()
        client.disconnect()
    return result[0] if result else "nothing"


@pytest.mark.parametrize("tls", ["1.3", "1.2"])
def test_revoked_client_refused_at_handshake(
    world: World, broker: int, workdir: str, tls: str
) -> None:
    """A revoked device is refused in the TLS handshake (alert certificate_revoked); others pass."""
    good = world.p.client(f"good-{tls}")
    revoked = world.p.client(f"revoked-{tls}")
    world.devices_ca.revoke(revoked[0])
    world.publish()
    port = support.free_port()
    gw = support.start_gateway(workdir, world.conf(port, broker), ready="crl crl: ready")
    try:
        support.wait_until(lambda: support.port_open(port), what="accepting")
        assert mqtt_connect(port, world.p, good, tls) == ACCEPTED
        assert "revoked" in str(mqtt_connect(port, world.p, revoked, tls))
        assert paho_outcome(port, world.p, good, tls).startswith("connected Success")
        assert not paho_outcome(port, world.p, revoked, tls).startswith("connected")
        # -ign_eof: read until the server closes, so the TLS 1.3 alert is seen.
        s_client = support.s_client(port, world.p.ca_file, revoked, tls, "-ign_eof")
        assert "certificate revoked" in s_client.stdout + s_client.stderr
        support.wait_until(lambda: "reason=revoked" in gw.log())
    finally:
        gw.stop()


def test_revoked_while_running_closes_live_session(world: World, broker: int, workdir: str) -> None:
    """Revoked while connected: the session is closed after the next refresh (an MQTT 5
    session on this listener without the policy edge hears DISCONNECT 0x87 first);
    reconnects refused."""
    victim = world.p.client("live-victim")
    bystander = world.p.client("live-bystander")
    port = support.free_port()
    gw = support.start_gateway(workdir, world.conf(port, broker), ready="crl crl: ready")
    try:
        support.wait_until(lambda: support.port_open(port))
        ctx = support.client_context(world.p, victim)
        live = support.tls_connect(port, ctx, timeout=15)
        live.sendall(support.connect_packet("victim"))
        assert support.read_exact(live, 4) == ACCEPTED
        live5 = support.tls_connect(port, ctx, timeout=15)
        live5.sendall(support.connect_packet("victim-5", level=5))
        head = support.read_exact(live5, 2)
        assert head[0] == 0x20 and support.read_exact(live5, head[1])[1] == 0  # CONNACK 5
        other = support.tls_connect(port, support.client_context(world.p, bystander), timeout=15)
        other.sendall(support.connect_packet("bystander"))
        assert support.read_exact(other, 4) == ACCEPTED

        world.devices_ca.revoke(victim[0])
        world.publish()
        start = time.monotonic()
        try:
            assert live.recv(10) == b""  # closed by the gateway
        except ConnectionResetError:
            pass
        assert time.monotonic() - start < 8
        assert support.read_exact(live5, 4) == b"\xe0\x02\x87\x00"  # DISCONNECT: revoked
        assert live5.recv(10) == b""
        assert "revoked" in str(mqtt_connect(port, world.p, victim))
        other.sendall(b"\xc0\x00")  # PINGREQ: the bystander's session is untouched
        assert support.read_exact(other, 2) == b"\xd0\x00"
        other.close()
        assert "certificate revoked by a revocation update" in gw.log()
    finally:
        gw.stop()


def _resume(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="localhost", session=session)


def _closed(sock: ssl.SSLSocket) -> bool:
    try:
        return sock.recv(10) == b""
    except (ConnectionError, ssl.SSLError):
        return True


@pytest.mark.parametrize("workers", ["", "workers = 2\n"])
@pytest.mark.parametrize("tls", ["1.3", "1.2"])
def test_resumed_session_is_checked_against_revocation(
    world: World, workdir: str, tls: str, workers: str
) -> None:
    """Resumption skips OpenSSL's verification, not the gateway's: a session resumed before
    the revocation is closed by the sweep, a resumption after it is refused with no byte
    reaching the broker, and an unrevoked device still resumes. With two workers too (the
    device's address keeps it on one worker, where its session resumes; that worker's
    copy of the CRLs decides)."""
    broker, broker_port = support.start_mosquitto(workdir)
    device = world.p.client(f"resume-victim-{tls}")
    bystander = world.p.client(f"resume-bystander-{tls}")
    port = support.free_port()
    gw = support.start_gateway(
        workdir,
        world.conf(
            port,
            broker_port,
            connect_timeout="2s",
            globals="crl_cache.refresh_interval = 1s\n" + workers,
        ),
        f"gw-resume-{tls}",
        "serving" if "workers" in workers else "crl crl: ready",
    )
    try:
        support.wait_until(lambda: support.port_open(port))
        ctx = support.client_context(world.p, device, tls)
        with support.tls_connect(port, ctx) as first:
            first.sendall(support.connect_packet(f"full-{tls}"))
            assert support.read_exact(first, 4) == ACCEPTED
            session = first.session
        assert session is not None
        live = _resume(port, ctx, session)
        assert live.session_reused
        live.sendall(support.connect_packet(f"resumed-before-{tls}"))
        assert support.read_exact(live, 4) == ACCEPTED
        session = live.session or session
        other_ctx = support.client_context(world.p, bystander, tls)
        with support.tls_connect(port, other_ctx) as other:
            other.sendall(support.connect_packet(f"bystander-{tls}"))
            assert support.read_exact(other, 4) == ACCEPTED
            other_session = other.session
        sess_file = os.path.join(workdir, f"sess-{tls}.pem")
        # -ign_eof: read until the gateway closes (connect_timeout), so that a TLS 1.3 ticket,
        # sent after the handshake, is received and saved.
        saved = support.s_client(
            port, world.p.ca_file, device, tls, "-sess_out", sess_file, "-ign_eof"
        )
        assert "New, TLSv1" in saved.stdout, saved.stdout + saved.stderr

        world.devices_ca.revoke(device[0])
        world.publish()
        support.wait_until(
            lambda: "revoked" in str(mqtt_connect(port, world.p, device, tls)), 15, what="CRL"
        )
        # The live session resumed before the revocation is closed by the sweep.
        assert _closed(live)
        # A resumption after it: the handshake resumes, then the gateway closes at once.
        late = _resume(port, ctx, session)
        assert late.session_reused
        try:
            late.sendall(support.connect_packet(f"resumed-after-{tls}"))
        except (ConnectionError, ssl.SSLError):
            pass
        assert _closed(late)
        again = support.s_client(
            port, world.p.ca_file, device, tls, "-sess_in", sess_file, "-ign_eof"
        )
        assert "Reused, TLSv1" in again.stdout, again.stdout + again.stderr
        support.wait_until(lambda: gw.log().count("resumed session refused") >= 2, 10)
        assert re.search(r"refused crl .*reason=revoked .*resumed session refused", gw.log())
        # The unrevoked device still resumes and is relayed.
        ok = _resume(port, other_ctx, other_session)  # type: ignore[arg-type]
        assert ok.session_reused
        ok.sendall(support.connect_packet(f"bystander-again-{tls}"))
        assert support.read_exact(ok, 4) == ACCEPTED
        ok.close()
        support.wait_until(
            lambda: f"bystander-again-{tls}" in broker.log(), 10, what="the bystander's CONNECT"
        )
        broker_log = broker.log()
        assert f"resumed-before-{tls}" in broker_log
        assert f"resumed-after-{tls}" not in broker_log  # nothing reached the broker
    finally:
        gw.stop()
        broker.stop()


def test_crl_server_down_at_start(world: World, broker: int, workdir: str) -> None:
    """Down at start: fail closed without a persisted CRL; enforce the persisted one if any."""
    good = world.p.client("down-good")
    revoked = world.p.client("down-revoked")
    world.devices_ca.revoke(revoked[0])
    world.publish()
    cache = os.path.join(workdir, "crl-cache")
    port = support.free_port()
    globals_ = f"crl_cache.refresh_interval = 1s\ncrl_cache.dir = {cache}\n"
    gw = support.start_gateway(
        workdir, world.conf(port, broker, globals=globals_), "gw1", "crl crl: ready"
    )
    support.wait_until(lambda: support.port_open(port))
    gw.stop()
    world.http.serve("/devices.crl", 503, b"down for maintenance")
    try:
        gw2 = support.start_gateway(
            workdir, world.conf(port, broker, globals=globals_), "gw2", "crl crl: ready"
        )
        try:
            support.wait_until(lambda: support.port_open(port))
            assert "loaded_from_disk" in gw2.log()
            assert mqtt_connect(port, world.p, good) == ACCEPTED
            assert "revoked" in str(mqtt_connect(port, world.p, revoked))
        finally:
            gw2.stop()
        # No persisted copy: nothing is known, the default policy refuses everyone.
        gw3 = support.start_gateway(workdir, world.conf(port, broker), "gw3", "crl crl: ready")
        try:
            support.wait_until(lambda: support.port_open(port))
            assert mqtt_connect(port, world.p, good) != ACCEPTED
            support.wait_until(lambda: "reason=crl_missing" in gw3.log())
            assert "HTTP 503" in gw3.log()
            # The device learns what happened: certificate_unknown, not unknown_ca (which
            # is what OpenSSL sends for "unable to get certificate CRL").
            for tls in ("1.3", "1.2"):
                seen = support.s_client(port, world.p.ca_file, good, tls, "-ign_eof")
                out = seen.stdout + seen.stderr
                assert "alert certificate unknown" in out and "unknown ca" not in out, out
            assert "unable to get certificate CRL" in gw3.log()
        finally:
            gw3.stop()
    finally:
        world.publish()


def test_bad_answers_after_a_good_fetch_keep_enforcing(
    world: World, broker: int, workdir: str
) -> None:
    """404, 500, garbage, another CA's CRL and an older CRL never displace the good CRL."""
    good = world.p.client("bad-answers-good")
    revoked = world.p.client("bad-answers-revoked")
    world.devices_ca.revoke(revoked[0])
    world.publish()
    with open(os.path.join(world.dir, "devices.crl.pem"), "rb") as f:
        current = f.read()
    from cryptography import x509

    number = (
        x509.load_pem_x509_crl(current)
        .extensions.get_extension_for_class(x509.CRLNumber)
        .value.crl_number
    )
    other = pki.make_ca("mqttgw test devices CA")
    answers = [
        (404, b"gone", "HTTP 404"),
        (500, b"oops", "HTTP 500"),
        (200, b"<html>surprise</html>", "garbage"),
        (200, pem(make_crl(other, [], number=number + 100)), "bad_signature"),
        (200, pem(make_crl(world.p.inter, [], number=number - 1)), "older than the CRL held"),
    ]
    port = support.free_port()
    gw = support.start_gateway(workdir, world.conf(port, broker), ready="crl crl: ready")
    try:
        support.wait_until(lambda: support.port_open(port))
        for status, body, logged in answers:
            world.http.serve("/devices.crl", status, body)
            support.wait_until(lambda text=logged: text in gw.log(), what=logged)
            assert mqtt_connect(port, world.p, good) == ACCEPTED
            assert "revoked" in str(mqtt_connect(port, world.p, revoked))
    finally:
        gw.stop()
        world.publish()


@pytest.mark.parametrize("policy", ["reject", "accept"])
def test_expired_crl_policy(world: World, broker: int, workdir: str, policy: str) -> None:
    """A CRL past its nextUpdate: reject refuses everyone, accept lets good clients in."""
    good = world.p.client(f"expired-{policy}-good")
    revoked = world.p.client(f"expired-{policy}-revoked")
    from cryptography import x509

    revoked_serial = x509.load_pem_x509_certificate(open(revoked[0], "rb").read()).serial_number
    stale = make_crl(
        world.p.inter,
        [revoked_serial],
        number=1,
        this_update=pki.now() - datetime.timedelta(days=2),
        next_update=datetime.timedelta(days=1),
    )
    world.http.serve("/stale.crl", 200, stale.public_bytes(serialization.Encoding.DER))
    port = support.free_port()
    conf = world.conf(
        port,
        broker,
        crl_cache_urls=f"{world.http.url('/stale.crl')},{world.url('root')}",
        crl_expired_policy=policy,
    )
    gw = support.start_gateway(workdir, conf, ready="crl crl: ready")
    try:
        support.wait_until(lambda: support.port_open(port))
        outcome = mqtt_connect(port, world.p, good)
        if policy == "reject":
            assert outcome != ACCEPTED
            support.wait_until(lambda: "reason=crl_expired" in gw.log())
            seen = support.s_client(port, world.p.ca_file, good, "1.3", "-ign_eof")
            out = seen.stdout + seen.stderr
            assert "alert certificate unknown" in out and "expired" not in out, out
        else:
            assert outcome == ACCEPTED
        assert "revoked" in str(mqtt_connect(port, world.p, revoked))  # revoked stays revoked
        support.wait_until(lambda: "expired at" in gw.log())
    finally:
        gw.stop()


def test_revoked_intermediate(world: World, broker: int, workdir: str, tmp_path: object) -> None:
    """A root CRL revoking the devices CA refuses every device under it."""
    directory = str(tmp_path)
    w2 = World(directory)
    try:
        good = w2.p.client("under-revoked-intermediate")
        port = support.free_port()
        urls = f"{w2.url('devices')}, {w2.url('root')}"
        gw = support.start_gateway(
            workdir, w2.conf(port, broker, crl_cache_urls=urls), ready="crl crl: ready"
        )
        try:
            support.wait_until(lambda: support.port_open(port))
            assert mqtt_connect(port, w2.p, good) == ACCEPTED
            inter_path = os.path.join(directory, "inter.pem")
            with open(inter_path, "wb") as f:
                f.write(pki.cert_pem(w2.p.inter.cert))
            w2.root_ca.revoke(inter_path)
            w2.publish()
            support.wait_until(lambda: "revoked" in str(mqtt_connect(port, w2.p, good)), 15)
        finally:
            gw.stop()
    finally:
        w2.http.stop()


@pytest.mark.parametrize("level, refusal", [(4, b"\x20\x02\x00\x05"), (5, b"\x20\x03\x00\x87\x00")])
def test_distribution_point_discovery(
    world: World, broker: int, workdir: str, level: int, refusal: bytes
) -> None:
    """With crl_cache_from_cert, an uncached CRL is fetched while the CONNECT is held."""
    dp = world.url("devices")
    good = world.p.client(f"dp-good-{level}", crl_url=dp)
    revoked = world.p.client(f"dp-revoked-{level}", crl_url=dp)
    world.devices_ca.revoke(revoked[0])
    world.publish()
    port = support.free_port()
    # The devices CA's own certificate names no distribution point: its issuer's CRL is
    # configured (every certificate below the anchor is checked).
    conf = world.conf(port, broker, crl_cache_urls=world.url("root"), crl_cache_from_cert="true")
    gw = support.start_gateway(workdir, conf, ready="crl crl: ready")
    try:
        support.wait_until(lambda: support.port_open(port))
        assert mqtt_connect(port, world.p, revoked, level=level) == refusal
        support.wait_until(lambda: "added distribution point" in gw.log())
        assert "holding crl" in gw.log()
        connack = mqtt_connect(port, world.p, good, level=level)
        assert isinstance(connack, bytes) and connack[0] == 0x20 and connack[3] == 0, connack
        # Now cached: the revoked one is refused at the handshake itself.
        assert "revoked" in str(mqtt_connect(port, world.p, revoked, level=level))
    finally:
        gw.stop()


def test_two_listeners_with_different_ca_chains(
    world: World, broker: int, workdir: str, tmp_path: object
) -> None:
    """Each listener trusts its own CAs and enforces its own CRLs."""
    other = World(str(tmp_path))
    try:
        a_port, b_port = support.free_port(), support.free_port()
        conf = world.conf(a_port, broker, name="a") + other.conf(
            b_port, broker, name="b", globals=""
        )
        revoked_b = other.p.client("b-revoked")
        other.devices_ca.revoke(revoked_b[0])
        other.publish()
        gw = support.start_gateway(workdir, conf, ready="crl b: ready")
        try:
            support.wait_until(lambda: "crl a: ready" in gw.log() and support.port_open(b_port))
            good_a, good_b = world.p.client("a-good"), other.p.client("b-good")
            assert mqtt_connect(a_port, world.p, good_a) == ACCEPTED
            assert mqtt_connect(b_port, other.p, good_b) == ACCEPTED
            assert "revoked" in str(mqtt_connect(b_port, other.p, revoked_b))
            assert mqtt_connect(a_port, world.p, revoked_b) != ACCEPTED  # wrong CA for a
        finally:
            gw.stop()
    finally:
        other.http.stop()


def openssl_verdict(w: World, cert: str, crls: list[str]) -> bool:
    """What `openssl verify -crl_check_all -extended_crl -use_deltas` says: True if OK."""
    args = ["openssl", "verify", "-crl_check_all", "-extended_crl", "-use_deltas"]
    args += ["-CAfile", w.p.ca_file]
    for name in crls:
        args += ["-CRLfile", os.path.join(w.dir, f"{name}.crl.pem")]
    result = support.run([*args, cert])
    return result.returncode == 0 and ": OK" in result.stdout


def test_verdicts_agree_with_openssl_verify(broker: int, workdir: str, tmp_path: object) -> None:
    """For real `openssl ca` CRLs, the gateway refuses exactly the devices that
    `openssl verify -crl_check_all -extended_crl -use_deltas` rejects: a good device, a revoked
    one, and (with the root's CRL missing, then revoking the devices CA) every device under
    the intermediate."""
    w = World(str(tmp_path))
    try:
        good = w.p.client("agree-good")
        revoked = w.p.client("agree-revoked")
        w.devices_ca.revoke(revoked[0])
        w.publish()
        cases: list[tuple[str, str, list[str]]] = [
            ("good", good[0], ["devices", "root"]),
            ("revoked", revoked[0], ["devices", "root"]),
            ("no root CRL", good[0], ["devices"]),  # the intermediate cannot be checked
        ]
        for what, cert_path, crls in cases:
            port = support.free_port()
            urls = ",".join(w.url(name) for name in crls)
            conf = w.conf(port, broker, crl_cache_urls=urls)
            gw = support.start_gateway(workdir, conf, f"gw-agree-{len(crls)}", "crl crl: ready")
            try:
                support.wait_until(lambda p=port: support.port_open(p))
                device = good if cert_path == good[0] else revoked
                accepted = mqtt_connect(port, w.p, device) == ACCEPTED
                assert accepted == openssl_verdict(w, cert_path, crls), what
            finally:
                gw.stop()
        # The root revokes the devices CA: both tools refuse even the good device.
        inter_path = os.path.join(str(tmp_path), "inter.pem")
        with open(inter_path, "wb") as f:
            f.write(pki.cert_pem(w.p.inter.cert))
        w.root_ca.revoke(inter_path)
        w.publish()
        assert not openssl_verdict(w, good[0], ["devices", "root"])
        port = support.free_port()
        gw = support.start_gateway(
            workdir, w.conf(port, broker), "gw-agree-inter", "crl crl: ready"
        )
        try:
            support.wait_until(lambda: support.port_open(port))
            assert "revoked" in str(mqtt_connect(port, w.p, good))
        finally:
            gw.stop()
    finally:
        w.http.stop()


def _crl_file(directory: str, name: str, crl: x509.CertificateRevocationList) -> str:
    path = os.path.join(directory, f"{name}.crl.pem")
    with open(path, "wb") as f:
        f.write(crl.public_bytes(serialization.Encoding.PEM))
    return path


def _revocation_entry(
    serial: int, reason: x509.ReasonFlags, issuer: x509.Name | None = None
) -> x509.RevokedCertificate:
    builder = (
        x509.RevokedCertificateBuilder()
        .serial_number(serial)
        .revocation_date(pki.now() - datetime.timedelta(minutes=5))
        .add_extension(x509.CRLReason(reason), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.CertificateIssuer([x509.DirectoryName(issuer)]), critical=True
        )
    return builder.build()


def _signed(
    issuer: pki.Issued,
    number: int,
    entries: list[x509.RevokedCertificate],
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.CertificateRevocationList:
    now = pki.now() - datetime.timedelta(minutes=1)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(now)
        .next_update(now + datetime.timedelta(hours=1))
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    for entry in entries:
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(issuer.key, hashes.SHA256())


def test_delta_and_indirect_crls_agree_with_openssl_verify(
    broker: int, workdir: str, tmp_path: object
) -> None:
    """A base CRL with a hold, a delta that releases it and revokes another device, and an
    indirect CRL of another entity: through the running gateway with real TLS clients, each
    device's fate matches `openssl verify -crl_check_all -extended_crl -use_deltas` on the same
    CRLs."""
    directory = str(tmp_path)
    p = support.make_pki(directory)
    xca = pki.make_ca("mqttgw test indirect CRL issuer", issuer=p.root)
    ca_file = pki.write_ca_bundle(os.path.join(directory, "ca-x.pem"), p.root, p.inter, xca)
    ind_url = "http://ca.test/indirect.crl"
    devices = {
        name: p.client(f"shape-{name}", **kwargs)
        for name, kwargs in [
            ("good", {}),
            ("released", {}),
            ("base_revoked", {}),
            ("delta_revoked", {}),
            ("ind_good", {"crl_url": ind_url, "crl_issuer": xca.cert.subject}),
            ("ind_revoked", {"crl_url": ind_url, "crl_issuer": xca.cert.subject}),
        ]
    }
    serial = {
        name: x509.load_pem_x509_certificate(open(cert, "rb").read()).serial_number
        for name, (cert, _) in devices.items()
    }
    R = x509.ReasonFlags
    delta_url = [x509.UniformResourceIdentifier("http://127.0.0.1:1/delta.crl")]
    crls = {
        "root": _signed(p.root, 1, [], []),
        "base": _signed(
            p.inter,
            10,
            [
                _revocation_entry(serial["released"], R.certificate_hold),
                _revocation_entry(serial["base_revoked"], R.key_compromise),
            ],
            # OpenSSL applies a delta only to a base (or certificate) that names its deltas
            # (FreshestCRL); the gateway applies any held delta of the base's issuer and
            # scope. The realistic shape, which both accept, is used here.
            [(x509.FreshestCRL([x509.DistributionPoint(delta_url, None, None, None)]), False)],
        ),
        "delta": _signed(
            p.inter,
            11,
            [
                _revocation_entry(serial["delta_revoked"], R.key_compromise),
                _revocation_entry(serial["released"], R.remove_from_crl),
            ],
            [(x509.DeltaCRLIndicator(10), True)],
        ),
        "indirect": _signed(
            xca,
            1,
            [_revocation_entry(serial["ind_revoked"], R.key_compromise, p.inter.cert.subject)],
            [(x509.IssuingDistributionPoint(None, None, False, False, None, True, False), True)],
        ),
    }
    http = CrlHttpServer()
    try:
        files = {name: _crl_file(directory, name, crl) for name, crl in crls.items()}
        for name, path in files.items():
            http.serve_file(f"/{name}.crl", path)
        port = support.free_port()
        urls = ",".join(http.url(f"/{name}.crl") for name in crls)
        conf = support.listener_conf(
            "crl",
            port,
            broker,
            p,
            {"cacertfile": ca_file, "enable_crl_cache": "true", "crl_cache_urls": urls},
        )
        gw = support.start_gateway(workdir, conf, "gw-shapes", ready="crl crl: ready")
        try:
            support.wait_until(lambda: support.port_open(port))
            verify = ["openssl", "verify", "-crl_check_all", "-extended_crl", "-use_deltas"]
            # OpenSSL looks an indirect CRL's issuer up among the untrusted certificates
            # (crl_akid_check), not the trust store: pass it there as well.
            xca_file = os.path.join(directory, "indirect-issuer.pem")
            with open(xca_file, "wb") as f:
                f.write(pki.cert_pem(xca.cert))
            verify += ["-CAfile", ca_file, "-untrusted", xca_file]
            for path in files.values():
                verify += ["-CRLfile", path]
            outcome = {}
            said = {}
            for name, device in devices.items():
                gateway_ok = mqtt_connect(port, p, device) == ACCEPTED
                openssl = support.run([*verify, device[0]])
                openssl_ok = openssl.returncode == 0 and ": OK" in openssl.stdout
                outcome[name] = (gateway_ok, openssl_ok)
                said[name] = openssl.stdout + openssl.stderr
            assert outcome == {
                "good": (True, True),
                "released": (True, True),
                "base_revoked": (False, False),
                "delta_revoked": (False, False),
                "ind_good": (True, True),
                # The one difference, on purpose: OpenSSL takes the best-scoring CRL that
                # covers every reason (here the devices CA's own base CRL, through its
                # "no IDP distribution point" fallback) and stops, so it never reads the
                # indirect CRL that this device's distribution point names as cRLIssuer.
                # RFC 5280 §6.3.3 (b)(1) ties that distribution point to the indirect CRL,
                # and the gateway reads every covering CRL: listed in any, refused.
                "ind_revoked": (False, True),
            }, said
        finally:
            gw.stop()
    finally:
        http.stop()


def _device_attempts(
    port: int, p: support.Pki, cert: tuple[str, str], until: float, out: list[str]
) -> None:
    """A device connecting from before the gateway exists: each attempt's outcome, until
    admitted (or ``until``)."""
    while time.monotonic() < until:
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=20)
        except OSError:
            time.sleep(0.02)
            continue
        try:
            ctx = support.client_context(p, cert)
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(support.connect_packet("early", keep_alive=0))
                got = support.read_exact(s, 4)
                out.append("admitted" if got == ACCEPTED else f"answered {got.hex()}")
        except (ssl.SSLError, ConnectionError, OSError, EOFError) as e:
            out.append(f"refused {e}")
        if out and out[-1] == "admitted":
            return
        time.sleep(0.05)


@pytest.mark.parametrize("workers", ["", "workers = 2\n"])
def test_a_large_crl_at_start_holds_devices_and_never_refuses_them(
    world: World, workdir: str, workers: str
) -> None:
    """Devices connect from the first moment while a 300,000-entry CRL is fetched and
    loaded: each is held, then admitted, none refused (not by a worker either); a device
    the CRL lists is refused. Then a restart from crl_cache.dir, the CA serving the same
    CRL: the same again."""
    from gateway.testing.crl import crl_der

    broker, broker_port = support.start_mosquitto(workdir)
    revoked = world.p.client("early-revoked")
    with open(revoked[0], "rb") as f:
        revoked_serial = x509.load_pem_x509_certificate(f.read()).serial_number
    base = 0x4000_0000_0000_0000_0000_0000_0000_0000
    listed = [base + i * 0x9E3779B97F4A7C15 for i in range(300_000)] + [revoked_serial]
    http = CrlHttpServer()
    http.serve("/big.crl", 200, crl_der(world.p.inter, listed))
    name = "big-w" if workers else "big-1"
    cache = os.path.join(workdir, f"crl-cache-{name}")
    devices = [world.p.client(f"early-{i}") for i in range(3)]
    try:
        for start in ("network", "cache"):
            port = support.free_port()
            conf = support.listener_conf(
                name,
                port,
                broker_port,
                world.p,
                {
                    "enable_crl_cache": "true",
                    "crl_cache_urls": f"{http.url('/big.crl')},{world.url('root')}",
                },
            )
            conf += workers + f"crl_cache.dir = {cache}\n"
            outcomes: list[list[str]] = [[] for _ in devices]
            until = time.monotonic() + 40
            threads = [
                threading.Thread(target=_device_attempts, args=(port, world.p, d, until, out))
                for d, out in zip(devices, outcomes, strict=True)
            ]
            for t in threads:
                t.start()
            gw = support.start_gateway(workdir, conf, f"gw-{name}-{start}", "mqttgw")
            try:
                for t in threads:
                    t.join()
                assert outcomes == [["admitted"]] * len(devices), (start, outcomes)
                assert "revoked" in str(mqtt_connect(port, world.p, revoked))
            finally:
                gw.stop()
            if start == "cache":
                assert "loaded_from_disk" in gw.log()
    finally:
        http.stop()
        broker.stop()
