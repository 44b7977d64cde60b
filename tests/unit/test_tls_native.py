"""``tls.native.renew_memory_bios``: a connection's memory BIOs replaced once its handshake
is over and both are empty, and the connection goes on as before."""

from __future__ import annotations

import pytest
from OpenSSL import SSL

from gateway import testing as support
from gateway.tls.native import renew_memory_bios


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> support.Pki:
    return support.make_pki(str(tmp_path_factory.mktemp("pki")))


def _pair(p: support.Pki) -> tuple[SSL.Connection, SSL.Connection]:
    server_ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    server_ctx.use_certificate_chain_file(p.server_cert)
    server_ctx.use_privatekey_file(p.server_key)
    client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_ctx.load_verify_locations(p.ca_file)
    client, server = SSL.Connection(client_ctx, None), SSL.Connection(server_ctx, None)
    client.set_connect_state()
    server.set_accept_state()
    return client, server


def _pump(a: SSL.Connection, b: SSL.Connection) -> None:
    for _ in range(10):
        for x, y in ((a, b), (b, a)):
            try:
                x.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                y.bio_write(x.bio_read(65536))
            except SSL.WantReadError:
                pass


def test_the_bios_are_renewed_only_after_the_handshake_and_only_empty(p: support.Pki) -> None:
    client, server = _pair(p)
    assert not renew_memory_bios(server)  # not started
    try:
        client.do_handshake()
    except SSL.WantReadError:
        pass
    server.bio_write(client.bio_read(65536))
    try:
        server.do_handshake()
    except SSL.WantReadError:
        pass
    assert not renew_memory_bios(server)  # in the middle: its flight still to be sent
    _pump(client, server)
    client.send(b"ping")  # a record waiting in the server's incoming BIO: not now
    server.bio_write(client.bio_read(65536))
    assert not renew_memory_bios(server)
    assert server.recv(100) == b"ping"
    old = server._into_ssl  # type: ignore[attr-defined]
    assert renew_memory_bios(server)
    assert server._into_ssl != old  # type: ignore[attr-defined]
    # Both ways, as before.
    server.send(b"pong")
    client.bio_write(server.bio_read(65536))
    assert client.recv(100) == b"pong"
    got = b""
    for _ in range(5):
        client.sendall(b"x" * 10000)
        server.bio_write(client.bio_read(65536))
        got += server.recv(65536)
    assert got == b"x" * 50000
    server.bio_shutdown()  # (the new incoming BIO's end of input)
    with pytest.raises(SSL.Error):
        server.recv(100)
    assert not renew_memory_bios(SSL.Connection(SSL.Context(SSL.TLS_SERVER_METHOD), None))
