"""TLS in a memory BIO owned by the connection's transport (``tls_io = transport``, the
one TLS path; ``auto``, the default, is the same): one ``tcp.Server`` per connection that
reads the socket in large chunks (one ``recv`` per readiness event), feeds OpenSSL's read
BIO, drains ``SSL_read`` until OpenSSL wants more, hands the protocol everything decrypted
as one ``dataReceived``, and writes each turn's TLS output (handshake flights, tickets,
records) as one. No ``TLSMemoryBIOProtocol``, no producer membrane, no wrapper protocol
between the socket and the relay: the transport's own write buffer and producer logic are
Twisted's (``FileDescriptor``), counted in TLS bytes.

- The handshake is driven on each read; the protocol hears ``handshakeCompleted``
  (``IHandshakeListener``) before any application byte, as with ``TLSMemoryBIOProtocol``;
  a failed handshake sends OpenSSL's alert and ends the connection with the ``SSL.Error``.
- ``write`` encrypts at once (a memory BIO never blocks a write) and sends the records at
  once when nothing is queued before them (``send_now``), else queues them.
- The peer's close_notify ends the connection cleanly (what came before it delivered
  first); ``loseConnection`` sends ours once the buffered records are written.
- Once the handshake is over and both BIOs are empty, they are replaced by new ones
  (``native.renew_memory_bios``: the handshake's flights are the largest buffers an idle
  device's connection would otherwise keep).

With ``proxy_protocol``, the PROXY header is read before TLS by the protocol the port built
(``reads_before_tls``), which hands the connection to the client protocol with
``start_tls``. On an inherited socket (systemd's, a takeover's, a worker's) too.
"""

from __future__ import annotations

from collections.abc import Iterable
from errno import EWOULDBLOCK
from typing import Any

from OpenSSL import SSL
from twisted.internet import main, tcp
from twisted.internet.interfaces import IHandshakeListener
from twisted.python.failure import Failure

from gateway.tls.native import read_records, renew_memory_bios, take_output
from gateway.twisted_native import SocketServer, send_now

_OUT = 256 * 1024  # TLS output read from the BIO at once


class BioTLSServer(SocketServer):
    """A server-side TCP connection whose TLS runs in memory BIOs it owns."""

    tls: Any = None  # the SSL.Connection (a GatewayConnection) in memory-BIO mode
    handshake_done = False
    _renewed = False
    # A header read before TLS (the PROXY protocol's): the protocol reads the raw bytes
    # until it calls start_tls; what came after the header waits here for OpenSSL.
    _before_tls = False
    _after_header = b""

    def __init__(
        self,
        sock: Any,
        protocol: Any,
        client: tuple[object, ...],
        server: tcp.Port,
        sessionno: int,
        reactor: Any,
    ) -> None:
        assert isinstance(server, BioTLSPort)
        tls = server.creator.serverConnectionForTLS(None)
        tls.set_accept_state()
        self.tls = tls
        self._before_tls = bool(getattr(protocol, "reads_before_tls", False))
        super().__init__(sock, protocol, client, server, sessionno, reactor)

    def start_tls(self, protocol: Any, rest: bytes) -> None:
        """The header before TLS is read (``reads_before_tls``): ``protocol``, built on the
        address it gave, takes the connection and TLS starts with ``rest``, the bytes that
        came after the header."""
        self._before_tls = False
        self._after_header = rest
        self.protocol = protocol
        protocol.makeConnection(self)

    def getHandle(self) -> Any:
        return self.tls

    # -- reading --------------------------------------------------------------------------

    def doRead(self) -> Any:
        try:
            data = self.socket.recv(self.bufferSize)  # (everything there, up to 64 KiB)
        except OSError as e:
            return None if e.args[0] == EWOULDBLOCK else main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        return self._received(data)

    def _received(self, data: bytes) -> Any:
        """Bytes read from the socket: through OpenSSL, then to the protocol."""
        if self._before_tls:  # to the header reader, as they are
            ended = super().deliver(data)
            if ended is not None or self._before_tls or self.disconnected:
                return ended
            data, self._after_header = self._after_header, b""
            if not data or self.disconnecting:
                return None
        tls = self.tls
        tls.bio_write(data)
        result: Any = None
        try:
            result = self._decrypt(tls)
        finally:
            if self.tls is not None:  # (not lost meanwhile)
                # ending now (an alert, a refused handshake): sent at once, not queued
                self._flush(now=result is not None)
        if not self._renewed and self.handshake_done and self.tls is not None:
            self._renewed = renew_memory_bios(self.tls)
        return result

    def _decrypt(self, tls: Any) -> Any:
        if not self.handshake_done:
            try:
                tls.do_handshake()
            except SSL.WantReadError:
                return None
            except SSL.Error as e:
                return e  # a failed handshake (its alert is flushed): the protocol's reason
            self.handshake_done = True
            listener = IHandshakeListener(self.protocol, None)
            if listener is not None:
                listener.handshakeCompleted()
            if self.disconnecting or self.disconnected:
                return None
        # Everything the read brought (one recv: at most bufferSize bytes of TLS, so less
        # plaintext than that: no budget needed), delivered as one.
        chunks: list[bytes] = []
        end: Any = None
        native = read_records(tls)  # (one loop of SSL_read: no exception per read)
        if native is not None:
            chunks, clean = native
        if native is None or not clean:  # pyOpenSSL says what stopped OpenSSL
            try:
                while True:
                    chunks.append(tls.recv(self.bufferSize))
            except SSL.WantReadError:
                pass
            except SSL.ZeroReturnError:  # the peer's close_notify
                end = main.CONNECTION_DONE
            except SSL.Error as e:
                end = e
        if chunks:
            result = super().deliver(b"".join(chunks))
            if result is not None or self.disconnected:
                return result
        return end

    # -- writing --------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not data or self.tls is None or not self.connected:
            return
        try:
            self.tls.sendall(data)
        except SSL.Error:
            return  # (the connection is failing: its read side reports why)
        self._flush()

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        self.write(b"".join(iovec))

    def _flush(self, now: bool = False) -> None:
        """Queue what OpenSSL wrote into its BIO: one write per turn (``now``: the
        connection ends this turn: what is queued, then this, sent best effort)."""
        data = take_output(self.tls)
        if data is None:  # (pyOpenSSL's way)
            out = []
            try:
                while True:
                    out.append(self.tls.bio_read(_OUT))
            except SSL.WantReadError:
                pass
            data = b"".join(out)
        if data and not now:
            send_now(self, data)
        elif data:
            try:
                self.socket.send(data)
            except OSError:
                pass

    # -- closing --------------------------------------------------------------------------

    def after_last_write(self) -> Any:
        """Everything written: our close_notify (best effort: it is one small record on a
        socket whose buffer just drained), then close."""
        if self.handshake_done and self.tls is not None:
            try:
                self.tls.set_shutdown(self.tls.get_shutdown() | SSL.RECEIVED_SHUTDOWN)
                self.tls.shutdown()
                self.socket.send(self.tls.bio_read(_OUT))
            except (SSL.Error, OSError):
                pass
        return main.CONNECTION_DONE

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.tls = None  # OpenSSL's state goes with the connection


class BioTLSPort(tcp.Port):
    """A listening port whose connections run TLS in memory BIOs of their own (the
    ``transport`` attribute Twisted's ``Port`` documents for this); ``creator`` makes each
    connection's ``SSL.Connection``."""

    transport = BioTLSServer

    def __init__(self, port: int, factory: Any, creator: Any, **kwargs: Any) -> None:
        super().__init__(port, factory, **kwargs)
        self.creator = creator
