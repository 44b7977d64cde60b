"""deny_file: the list's syntax, what it names, and the relay refusing (at the handshake)
and closing (after a reload's sweep) the sessions of the certificates it names."""

from __future__ import annotations

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import task

from gateway import testing as support
from gateway.deny import DenyError, DenyList, parse_deny
from gateway.proxy import session as S
from tests.unit.tlsloop import Listener


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> support.Pki:
    return support.make_pki(str(tmp_path_factory.mktemp("pki")))


def _cert(pair: tuple[str, str]) -> x509.Certificate:
    with open(pair[0], "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def test_each_kind_of_line_is_read() -> None:
    digest = "AB" * 32
    text = (
        "# devices taken out of service\n"
        f"sha256 {':'.join(digest[i : i + 2] for i in range(0, 64, 2))}\n"
        "\n"
        "serial 1A2B  # any issuer\n"
        "serial 0c CN=Devices CA,O=Example\n"
        "serial 0C O=Other\n"
    )
    deny = parse_deny(text)
    assert deny.fingerprints == {bytes.fromhex(digest)}
    assert deny.serials[0x1A2B] is None
    assert deny.serials[0x0C] == {"CN=Devices CA,O=Example", "O=Other"}
    assert len(deny) == 3
    assert parse_deny("") == DenyList()


@pytest.mark.parametrize(
    ("text", "line", "why"),
    [
        ("block everything", 1, "'block' is not an entry"),
        ("# ok\nsha256 abcd", 2, "64 hex digits"),
        ("sha256 " + "zz" * 32, 1, "64 hex digits"),
        ("serial", 1, "is not a serial"),
        ("serial 12G4", 1, "is not a serial"),
        ("serial " + "1" * 41, 1, "is not a serial"),
        ("serial 01 CN", 1, "is not an RFC 4514 name"),
        ("#" * 5000, 1, "longer than 4096"),
    ],
)
def test_a_bad_line_is_named(text: str, line: int, why: str) -> None:
    with pytest.raises(DenyError) as e:
        parse_deny(text)
    assert e.value.line == line and why in e.value.why


@given(st.text(max_size=300))
def test_any_text_is_a_list_or_an_error_naming_its_line(text: str) -> None:
    try:
        deny = parse_deny(text)
    except DenyError as e:
        assert 1 <= e.line <= max(1, len(text.splitlines()))
    else:
        assert len(deny) >= 0


def test_a_certificate_is_named_by_fingerprint_serial_or_serial_and_issuer(
    p: support.Pki,
) -> None:
    cert = _cert(p.client("dev-named"))
    serial, issuer = cert.serial_number, cert.issuer.rfc4514_string()
    digest = cert.fingerprint(hashes.SHA256()).hex()
    assert parse_deny(f"sha256 {digest}").match(cert) == f"sha256 {digest.upper()}"
    assert parse_deny(f"serial {serial:x}").match(cert) == f"serial {serial:X}"
    assert parse_deny(f"serial {serial:X} {issuer}").match(cert) == f"serial {serial:X} {issuer}"
    assert parse_deny(f"serial {serial:X} CN=Someone Else").match(cert) is None
    assert parse_deny(f"serial {serial + 1:X}\nsha256 {'00' * 32}").match(cert) is None


def test_a_listed_device_is_refused_at_the_handshake_and_others_pass(p: support.Pki) -> None:
    denied, good = p.client("dev-denied"), p.client("dev-fine")
    listener = Listener.make(p, deny=parse_deny(f"serial {_cert(denied).serial_number:X}"))
    _, client, pump = listener.connect(p, denied)
    pump.flush()
    client.transport.write(support.connect_packet("dev-denied"))
    pump.flush()
    assert listener.stats.refused == {"deny_listed": 1}
    assert listener.upstream.attempts == []  # nothing reached a broker
    _, client, pump = listener.connect(p, good)
    pump.flush()
    client.transport.write(support.connect_packet("dev-fine"))
    pump.flush()
    assert len(listener.upstream.attempts) == 1


def test_a_reloaded_list_closes_the_live_sessions_it_names(p: support.Pki) -> None:
    """The sweep after a reload: the session of a certificate the new list names is closed
    on both sides and logged as ended by deny_listed; the others stay."""
    named, other = p.client("dev-live-named"), p.client("dev-live-other")
    listener = Listener.make(p)
    gateway = listener.factory.wrappedFactory
    sessions = []
    for pair, client_id in ((named, "dev-live-named"), (other, "dev-live-other")):
        server, client, pump = listener.connect(p, pair)
        pump.flush()
        client.transport.write(support.connect_packet(client_id))
        pump.flush()
        upstream, broker = listener.upstream.succeed()
        upstream.dataReceived(b"\x20\x02\x00\x00")
        pump.flush()
        sessions.append((server.wrappedProtocol, broker, pump))
    # The sweep's cooperator, run by the test's clock.
    cooperator = task.Cooperator(scheduler=lambda f: listener.reactor.callLater(0, f))
    gateway._cooperate = cooperator.cooperate
    box = gateway.box
    box.parts = attrs.evolve(box.parts, deny=parse_deny(f"sha256 {_hex(_cert(named))}"))
    done = gateway.sweep_denied()
    for _ in range(5):
        listener.reactor.advance(0.01)
    assert done.called
    for _, _, pump in sessions:
        pump.flush()
    (first, first_broker, _), (second, second_broker, _) = sessions
    assert first.session.state in (S.State.CLOSING, S.State.CLOSED)
    assert first.session.ended_by[0] == "deny_listed"
    assert first_broker.disconnecting
    assert second.session.state is S.State.RELAY and not second_broker.disconnecting


def _hex(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()
