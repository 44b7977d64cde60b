"""TLS on the socket itself: OpenSSL reads and writes the connection's file descriptor
(``SSL_set_fd``, as Twisted's TLS did before the memory BIO), driven by the reactor's
readiness events. No memory BIO, no second protocol layer: one transport per connection,
its ``doRead`` one ``SSL_read``, its ``writeSomeData`` one ``SSL_write``.

``TLSServer`` is a ``twisted.internet.tcp.Server`` (the socket, addresses, producers, the
close are Twisted's) whose reads and writes go through the ``SSL.Connection`` over the same
socket. OpenSSL's non-blocking rules, as Twisted's old socket TLS handled them:

- a read may need the socket writable (a renegotiation, a key update: ``WantWriteError``),
  and a write may need it readable (``WantReadError``): the transport then waits for the
  other readiness and resumes what it was doing, whatever the protocol asked meanwhile
  (``pauseProducing`` and ``resumeProducing`` are remembered, not lost);
- a write that could not complete is retried with the same bytes first (partial writes and
  moving buffers are on: pyOpenSSL sets both);
- decrypted bytes already in OpenSSL's buffer are read in the same turn (``pending``);
- ``loseConnection`` sends close_notify once the buffered data is written, then closes;
  ``abortConnection`` closes at once.

The handshake is driven explicitly (``do_handshake`` on readiness) so that the protocol hears
``handshakeCompleted`` (``IHandshakeListener``) before any application byte, as with
``TLSMemoryBIOProtocol``. A failed handshake ends the connection with the ``SSL.Error`` as
the reason, which the relay turns into its refusal line.

``TLSPort`` is a ``twisted.internet.tcp.Port`` whose connections are ``TLSServer`` (the
``transport`` attribute Twisted's ``Port`` documents for this): the connection creator gives
each one its ``SSL.Connection``.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet import main, tcp
from twisted.internet.interfaces import IHandshakeListener
from twisted.python.failure import Failure

from gateway.twisted_native import SocketServer

# Decrypted bytes at most one doRead delivers before letting other connections run.
READ_BUDGET = 256 * 1024


class TLSServer(SocketServer):
    """A server-side TCP connection whose bytes OpenSSL reads and writes on the socket."""

    tls: Any = None  # the SSL.Connection (a GatewayConnection) over self.socket
    handshake_done = False
    _write_blocked_on_read = False  # a write waits for the socket to be readable
    _read_blocked_on_write = False  # a read waits for the socket to be writable
    _want_read = True  # what the protocol (and Twisted) asked for, restored after a block
    _want_write = False
    _closing_tls = False  # close_notify being sent (loseConnection)

    def __init__(
        self,
        sock: Any,
        protocol: Any,
        client: tuple[object, ...],
        server: tcp.Port,
        sessionno: int,
        reactor: Any,
    ) -> None:
        assert isinstance(server, TLSPort)
        tls = server.creator.serverConnectionForSocket(sock)
        tls.set_accept_state()
        self.tls = tls
        super().__init__(sock, protocol, client, server, sessionno, reactor)

    def getHandle(self) -> Any:
        return self.tls

    # -- reading --------------------------------------------------------------------------

    def doRead(self) -> Any:
        if self._closing_tls:
            return self._send_close_notify()
        if self._write_blocked_on_read:
            self._write_blocked_on_read = False
            self._restore_interest()
        try:
            if not self.handshake_done:
                self.tls.do_handshake()
                self.handshake_done = True
                listener = IHandshakeListener(self.protocol, None)
                if listener is not None:
                    listener.handshakeCompleted()
                if self.disconnecting or self.disconnected:
                    return None
            # Every record the socket has, up to a budget, delivered as one: OpenSSL reads
            # a record at a time (pyOpenSSL cannot turn read-ahead on), so stopping after
            # one would cost a turn of the reactor per record.
            chunks = [self.tls.recv(self.bufferSize)]
            budget = READ_BUDGET - len(chunks[0])
            try:
                while budget > 0:
                    more = self.tls.recv(self.bufferSize)
                    chunks.append(more)
                    budget -= len(more)
            except SSL.WantReadError:
                pass  # the socket is drained
            except SSL.WantWriteError:  # a record that needs a write first (a key update)
                self._read_blocked_on_write = True
                tcp.Server.startWriting(self)
                tcp.Server.stopReading(self)
            except (SSL.ZeroReturnError, SSL.SysCallError):
                self.deliver(b"".join(chunks))  # what came before the end first
                raise
            data = b"".join(chunks)
        except SSL.WantReadError:
            return None
        except SSL.WantWriteError:
            self._read_blocked_on_write = True
            tcp.Server.startWriting(self)
            tcp.Server.stopReading(self)
            return None
        except SSL.ZeroReturnError:  # the peer's close_notify
            return main.CONNECTION_DONE
        except SSL.SysCallError as e:
            # (-1, 'Unexpected EOF'): the peer closed TCP without close_notify.
            return main.CONNECTION_DONE if e.args and e.args[0] == -1 else main.CONNECTION_LOST
        except SSL.Error as e:
            return e  # a failed handshake: the reason the protocol sees
        return self.deliver(data)

    # -- writing --------------------------------------------------------------------------

    def doWrite(self) -> Any:
        if self._closing_tls:
            return self._send_close_notify()
        if self._read_blocked_on_write:
            self._read_blocked_on_write = False
            self._restore_interest()
            result = self.doRead()  # what the read was waiting for
            if result is not None:
                return result
        return super().doWrite()

    def writeSomeData(self, data: bytes) -> Any:
        try:
            return self.tls.send(memoryview(data)[: self.SEND_LIMIT])
        except SSL.WantWriteError:
            return 0
        except SSL.WantReadError:
            self._write_blocked_on_read = True
            tcp.Server.stopWriting(self)
            tcp.Server.startReading(self)
            return 0
        except (SSL.ZeroReturnError, SSL.SysCallError):
            return main.CONNECTION_LOST
        except SSL.Error as e:
            return e

    # -- what the protocol asks for, kept apart from what OpenSSL needs ---------------------

    def startReading(self) -> None:
        self._want_read = True
        if not self._read_blocked_on_write:
            tcp.Server.startReading(self)

    def stopReading(self) -> None:
        self._want_read = False
        if self.disconnected or not self._write_blocked_on_read:
            tcp.Server.stopReading(self)

    def startWriting(self) -> None:
        self._want_write = True
        if not self._write_blocked_on_read:
            tcp.Server.startWriting(self)

    def stopWriting(self) -> None:
        self._want_write = False
        if self.disconnected or not self._read_blocked_on_write:
            tcp.Server.stopWriting(self)

    def _restore_interest(self) -> None:
        if self._want_write:
            tcp.Server.startWriting(self)
        else:
            tcp.Server.stopWriting(self)
        if self._want_read:
            tcp.Server.startReading(self)
        else:
            tcp.Server.stopReading(self)

    # -- closing --------------------------------------------------------------------------

    def after_last_write(self) -> Any:
        """Everything written: send close_notify (once the socket takes it), then close."""
        if not self.handshake_done:
            return main.CONNECTION_DONE
        self._closing_tls = True
        return self._send_close_notify()

    def _send_close_notify(self) -> Any:
        try:
            # Do not wait for the peer's close_notify: mark it received, send ours.
            self.tls.set_shutdown(self.tls.get_shutdown() | SSL.RECEIVED_SHUTDOWN)
            done = self.tls.shutdown()
        except SSL.WantWriteError:
            done = False
        except SSL.Error:
            return main.CONNECTION_DONE  # the peer is gone: nothing more to send
        if done:
            return main.CONNECTION_DONE
        tcp.Server.startWriting(self)
        tcp.Server.startReading(self)  # notice a peer that vanished meanwhile
        return None

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.tls = None  # OpenSSL's state goes with the connection


class TLSPort(tcp.Port):
    """A listening port whose connections speak TLS on their sockets (``TLSServer``);
    ``creator`` makes each connection's ``SSL.Connection``."""

    transport = TLSServer

    def __init__(self, port: int, factory: Any, creator: Any, **kwargs: Any) -> None:
        super().__init__(port, factory, **kwargs)
        self.creator = creator
