"""The listener's TLS and relay logic over in-memory TLS, with a fake clock and broker."""

from __future__ import annotations

import datetime

import pytest
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from gateway import testing as support
from gateway.demo import pki
from tests.unit.tlsloop import Listener


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> support.Pki:
    return support.make_pki(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture(scope="module")
def good(p: support.Pki) -> tuple[str, str]:
    return p.client("dev-good")


def test_good_client_is_relayed_after_connect(p: support.Pki, good: tuple[str, str]) -> None:
    """The broker is contacted only after a valid CONNECT; bytes then flow both ways untouched."""
    listener = Listener.make(p)
    server, client, pump = listener.connect(p, good)
    pump.flush()
    assert listener.upstream.attempts == []  # handshake done, no CONNECT yet: no broker
    connect = support.connect_packet("dev-good")
    client.transport.write(connect + b"\xc0\x00")  # CONNECT and a PINGREQ in one record
    pump.flush()
    assert len(listener.upstream.attempts) == 1
    upstream, broker = listener.upstream.succeed()
    assert broker.value() == connect + b"\xc0\x00"
    upstream.dataReceived(b"\x20\x02\x00\x00")
    pump.flush()
    assert client.data == b"\x20\x02\x00\x00"
    client.transport.write(b"\x30\x05\x00\x01tab")
    pump.flush()
    assert broker.value().endswith(b"\x30\x05\x00\x01tab")
    assert listener.stats.accepted == 1
    assert listener.stats.active == 1
    # Producers are registered both ways for flow control.
    assert broker.producer is not None


def test_client_close_closes_upstream_and_back(p: support.Pki, good: tuple[str, str]) -> None:
    """Closing either side closes the other."""
    listener = Listener.make(p)
    server, client, pump = listener.connect(p, good)
    pump.flush()
    client.transport.write(support.connect_packet("a"))
    pump.flush()
    upstream, broker = listener.upstream.succeed()
    client.transport.loseConnection()
    pump.flush()
    assert broker.disconnecting
    assert listener.stats.active == 0
    # And the other way: the broker half-closes, the client is closed after its data.
    listener2 = Listener.make(p)
    server, client, pump = listener2.connect(p, good)
    pump.flush()
    client.transport.write(support.connect_packet("b"))
    pump.flush()
    upstream, broker = listener2.upstream.succeed()
    upstream.dataReceived(b"\x20\x02\x00\x00")
    upstream.readConnectionLost()
    pump.flush()
    assert client.data == b"\x20\x02\x00\x00"
    assert client.lost is not None


@pytest.mark.parametrize(
    "level, expected", [(4, b"\x20\x02\x00\x03"), (5, b"\x20\x03\x00\x88\x00")]
)
def test_upstream_unavailable_gets_connack(
    p: support.Pki, good: tuple[str, str], level: int, expected: bytes
) -> None:
    """An unreachable broker yields CONNACK 'server unavailable' in the client's dialect."""
    listener = Listener.make(p)
    server, client, pump = listener.connect(p, good)
    pump.flush()
    client.transport.write(support.connect_packet("x", level=level))
    pump.flush()
    listener.upstream.fail(Failure(error.ConnectionRefusedError()))
    pump.flush()
    assert client.data == expected
    assert client.lost is not None
    assert listener.stats.refused["upstream_unavailable"] == 1


def _refused(listener: Listener) -> set[str]:
    return set(listener.stats.refused)


def test_client_without_certificate_is_refused(p: support.Pki) -> None:
    """No client certificate: refused in the handshake, reason no_certificate."""
    listener = Listener.make(p)
    with capturedLogs() as events:
        server, client, pump = listener.connect(p, None)
        pump.flush()
    assert _refused(listener) == {"no_certificate"}
    assert listener.upstream.attempts == []
    assert any(e.get("reason") == "no_certificate" for e in events)


def test_unknown_ca_and_expired_are_refused(p: support.Pki, tmp_path: object) -> None:
    """Certificates from another CA, or expired, fail verification with their reason class."""
    other = pki.make_ca("someone else's CA")
    stranger = pki.issue(other, "stranger").write(str(tmp_path), "stranger")
    listener = Listener.make(p)
    _, _, pump = listener.connect(p, stranger)
    pump.flush()
    old = pki.now() - datetime.timedelta(days=30)
    expired = p.client("expired", not_before=old, valid_days=1)
    _, _, pump = listener.connect(p, expired)
    pump.flush()
    assert listener.stats.refused == {"unknown_ca": 1, "expired": 1}
    assert listener.upstream.attempts == []


def test_handshake_timeout(p: support.Pki, good: tuple[str, str]) -> None:
    """A connection that never completes its handshake is closed at handshake_timeout."""
    listener = Listener.make(p, handshake_timeout="2s")
    server = listener.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
    from twisted.internet.testing import StringTransport

    transport = StringTransport()
    server.makeConnection(transport)
    listener.reactor.advance(1.9)
    assert not transport.disconnecting
    listener.reactor.advance(0.2)
    assert transport.disconnecting
    assert _refused(listener) == {"handshake_timeout"}


def test_connect_timeout_and_bad_connect(p: support.Pki, good: tuple[str, str]) -> None:
    """After the handshake, a missing or malformed CONNECT closes the connection."""
    listener = Listener.make(p, connect_timeout="3s")
    _, client, pump = listener.connect(p, good)
    pump.flush()
    client.transport.write(support.connect_packet("slow")[:5])
    pump.flush()
    listener.reactor.advance(3.1)
    pump.flush()
    assert client.lost is not None
    _, client, pump = listener.connect(p, good)
    pump.flush()
    client.transport.write(b"GET / HTTP/1.1\r\n\r\n")
    pump.flush()
    assert client.lost is not None
    assert listener.stats.refused == {"connect_timeout": 1, "bad_connect": 1}
    assert listener.upstream.attempts == []


def test_max_connections(p: support.Pki) -> None:
    """Connections beyond max_connections are refused before any TLS work."""
    listener = Listener.make(p, max_connections="2")
    addr = IPv4Address("TCP", "127.0.0.1", 40002)
    from twisted.internet.testing import StringTransport

    protocols = [listener.factory.buildProtocol(addr) for _ in range(2)]
    for proto in protocols:
        proto.makeConnection(StringTransport())
    assert listener.factory.buildProtocol(addr) is None
    assert listener.stats.refused == {"too_many_connections": 1}


def test_swapped_context_serves_new_connections_only(p: support.Pki, good: tuple[str, str]) -> None:
    """A new context given to the creator serves new connections; live ones keep theirs."""
    from gateway.tls.context import build_context
    from gateway.tls.verify import CertificateVerifier

    listener = Listener.make(p)
    server, client, pump = listener.connect(p, good)
    pump.flush()
    old_context = server._tlsConnection.get_context()
    config = listener.config
    new_context = build_context(config.name, config.tls, listener.material, CertificateVerifier())
    listener.creator._context = lambda: new_context
    server2, client2, pump2 = listener.connect(p, good)
    pump2.flush()
    assert server._tlsConnection.get_context() is old_context
    assert server2._tlsConnection.get_context() is new_context
    client.transport.write(support.connect_packet("still-works"))
    pump.flush()
    assert len(listener.upstream.attempts) == 1


def test_client_gone_while_upstream_connects(p: support.Pki, good: tuple[str, str]) -> None:
    """A client that leaves while the broker connection opens cancels the attempt."""
    listener = Listener.make(p)
    _, client, pump = listener.connect(p, good)
    pump.flush()
    client.transport.write(support.connect_packet("leaver"))
    pump.flush()
    assert len(listener.upstream.attempts) == 1
    client.transport.loseConnection()
    pump.flush()
    assert listener.upstream.cancelled == 1
    assert listener.stats.active == 0
    # A late success is closed at once rather than relayed.
    upstream, broker = listener.upstream.succeed()
    assert broker.disconnecting


def test_a_session_ending_in_a_tls_error_is_logged_in_plain_words() -> None:
    """A client that fails a TLS 1.2 renegotiation (refused) ends its session with OpenSSL's
    words in the session log, never a Python repr of the error list."""
    from OpenSSL import SSL
    from twisted.python.failure import Failure

    from gateway.proxy.broker_link import lost_text

    text = lost_text(Failure(SSL.Error([("SSL routines", "", "tls alert handshake failure")])))
    assert text == "TLS error: tls alert handshake failure"
    assert "[" not in text and "(" not in text
