"""Listening sockets that outlive a process: systemd's socket activation and the takeover.

A restart or an upgrade should never refuse a device. Two ways keep the listening sockets
open across it, so that connections wait in the kernel's backlog while no process accepts
and the next process accepts them:

- **systemd socket activation** (``mqttgw.socket``): systemd binds the ports and passes
  them (``LISTEN_FDS``); ``systemctl restart mqttgw`` leaves them open;
- **the takeover** (as HAProxy's ``-x``): with ``takeover_socket`` set, a running gateway
  answers on that unix socket; a new one started with ``--takeover`` asks it for its
  listening sockets (every listener's, the admin listener's and the takeover socket
  itself: SCM_RIGHTS), listens on them, and once it accepts on every listener tells the old
  one to drain (as on SIGTERM: not ready, sessions closed at ``drain_rate``, exit 0).

A listener whose address matches an inherited socket listens on it instead of binding
(``Inherited.take``); inherited sockets that match no listener are closed and logged.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from twisted.application import service
from twisted.internet import endpoints, protocol
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from zope.interface import implementer

from gateway.errors import GatewayError
from gateway.twisted_native import shared_on_close

log = Logger()

HANDOVER = b"HANDOVER"  # the new process asks for the sockets
DRAIN = b"DRAIN"  # the new process accepts on every listener: the old one drains
MAX_SOCKETS = 256  # listeners x workers + admin + the takeover socket, bounded
TIMEOUT = 10.0  # seconds the new process waits for the old one's answer


class TakeoverError(GatewayError):
    def __init__(self, detail: str) -> None:
        super().__init__("takeover", detail)


def _bind_of(sock: socket.socket) -> tuple[str, int] | str | None:
    try:
        name = sock.getsockname()
    except OSError:
        return None
    if sock.family == socket.AF_UNIX:
        return name if isinstance(name, str) else name.decode(errors="replace")
    return str(name[0]), int(name[1])


class Inherited:
    """The listening sockets this process was given, by the address each is bound to."""

    def __init__(self, sockets: Iterable[socket.socket] = ()) -> None:
        self.by_bind: dict[tuple[str, int] | str, list[socket.socket]] = {}
        self.add(sockets)

    def add(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            bind = _bind_of(sock)
            if bind is None or sock.type != socket.SOCK_STREAM:
                log.warn("an inherited descriptor is not a listening socket: closed")
                sock.close()
                continue
            self.by_bind.setdefault(bind, []).append(sock)

    def take(self, bind: tuple[str, int] | str) -> list[socket.socket]:
        """The sockets bound to ``bind`` (``(host, port)``, or a unix path), taken."""
        if isinstance(bind, tuple):
            host, port = bind
            for key in list(self.by_bind):
                if isinstance(key, tuple) and key == (host, port):
                    return self.by_bind.pop(key)
            return []
        return self.by_bind.pop(bind, [])

    def close_rest(self) -> None:
        """Close what no listener took (a listener the new configuration removed)."""
        for bind, sockets in self.by_bind.items():
            log.warn("inherited socket {bind} matches no listener: closed", bind=bind)
            for sock in sockets:
                sock.close()
        self.by_bind.clear()


def from_systemd(reactor: Any) -> list[socket.socket]:
    """The sockets systemd passed (socket activation). Twisted reads ``LISTEN_FDS`` when
    its endpoints module loads (and clears it, so that no child takes them too); its
    ``systemd:`` endpoint strings reach them by index."""
    out: list[socket.socket] = []
    for index in range(MAX_SOCKETS):
        try:
            found = endpoints.serverFromString(reactor, f"systemd:domain=INET:index={index}")
        except (IndexError, KeyError, ValueError):
            break
        out.append(socket.socket(fileno=found.fileno))  # (its family read from the socket)
    return out


def take_over(path: str, timeout: float = TIMEOUT) -> tuple[list[socket.socket], socket.socket]:
    """Ask the gateway running on ``path`` for its listening sockets (blocking: before the
    reactor runs). Returns them and the connection on which to tell it to drain."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    data, fds = b"", []
    try:
        conn.connect(path)
        conn.sendall(HANDOVER + b"\r\n")
        while not data.endswith(b"\n"):
            chunk, got, _flags, _addr = socket.recv_fds(conn, 4096, MAX_SOCKETS)
            if not chunk:
                raise TakeoverError(f"{path}: the running gateway closed before it answered")
            data += chunk
            fds += got
            if len(data) > 65536 or len(fds) > MAX_SOCKETS:
                raise TakeoverError(f"{path}: an answer too large")
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("sockets") != len(fds):
            raise TakeoverError(f"{path}: {len(fds)} sockets came, the answer says otherwise")
    except OSError as e:
        conn.close()
        raise TakeoverError(f"cannot take over from {path}: {e.strerror or e}") from None
    except (ValueError, TakeoverError):
        conn.close()
        for fd in fds:
            os.close(fd)
        raise
    conn.settimeout(None)
    return [socket.socket(fileno=fd) for fd in fds], conn


class _Handing(LineOnlyReceiver):
    """The old process's side of one takeover."""

    MAX_LENGTH = 64
    transport: Any

    def __init__(self, owner: HandoverService) -> None:
        self.owner = owner
        self.handed = False

    def connectionMade(self) -> None:
        # Only this user's processes may take the sockets (the file is 0600 too).
        creds = self.transport.getHandle().getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
        )
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid != os.getuid():
            log.warn("takeover: refused a process of user {uid}", uid=uid)
            self.transport.loseConnection()

    def lineReceived(self, line: bytes) -> None:
        if line == HANDOVER and not self.handed:
            self.handed = True
            fds = self.owner.sockets()
            for fd in fds:
                self.transport.sendFileDescriptor(fd)
            self.owner.share()
            answer = json.dumps({"sockets": len(fds), "pid": os.getpid()}).encode()
            self.transport.write(answer.ljust(len(fds)) + b"\n")  # a byte for each socket
            log.info("takeover: {n} listening socket(s) handed to a new gateway", n=len(fds))
        elif line == DRAIN and self.handed:
            log.info("takeover: the new gateway accepts on every listener; draining")
            self.owner.handed_over()
        else:
            self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.transport.loseConnection()


class Gateway(Protocol):
    """What the takeover asks of the gateway (``GatewayService``): its ports (each with
    ``filenos()``), whether every listener accepts, the sockets it was given, and a drain."""

    @property
    def listeners(self) -> Mapping[str, Any]: ...  # each with .port

    @property
    def admin(self) -> Any: ...  # the admin listener's port, or None

    @property
    def role(self) -> Any: ...  # its .inherited: the sockets this process was given

    def status(self) -> Any: ...

    def drain(self, origin: str) -> object: ...


class HandoverService(service.Service):
    """``takeover_socket``: answers a new gateway's ``--takeover`` (the old side), and,
    in a process that took over (``told``), tells the old one to drain once every listener
    accepts."""

    name = "takeover"

    def __init__(
        self, gateway: Gateway, reactor: Any, path: str, told: socket.socket | None = None
    ) -> None:
        self.gateway = gateway
        self.reactor = reactor
        self.path = path
        self.inherited: Inherited = gateway.role.inherited
        self.told = told  # the connection to the process this one took over from
        self.port: Any = None
        self._owns_path = True  # removed at stop, unless handed over
        self._poll: Any = None

    def sockets(self) -> list[int]:
        """Every listening descriptor to hand over: the listeners', the admin listener's
        and this takeover socket's."""
        g = self.gateway
        ports = [ls.port for ls in g.listeners.values()] + ([g.admin] if g.admin else [])
        own = [self.port.fileno()] if self.port is not None else []
        return [fd for port in ports for fd in port.filenos()] + own

    def share(self) -> None:
        """The sockets are the new process's too: closing ours must not shut them down."""
        g = self.gateway
        ports = [ls.port for ls in g.listeners.values()] + ([g.admin] if g.admin else [])
        for port in [getattr(p, "port", None) for p in ports]:
            shared_on_close(port)

    def handed_over(self) -> None:
        self._owns_path = False  # the next process listens on it now
        self.reactor.callLater(0, self.gateway.drain, "a takeover")

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        taken = self.inherited.take(self.path)
        # The takeover socket of the process this one took over from, or a new one. Not a
        # Twisted unix port: that one unlinks its path when it closes, and the path must
        # outlive a process that handed its socket over.
        sock = taken[0] if taken else _bind_unix(self.path)
        sock.setblocking(False)
        factory = protocol.Factory.forProtocol(lambda: _Handing(self))
        self.port = _Accepting(sock, self.reactor, factory)
        self.reactor.addReader(self.port)

    def startService(self) -> None:
        super().startService()
        if self.port is None:
            self.privilegedStartService()
        if self.told is not None:
            self._poll = self.reactor.callLater(0.2, self._tell_when_ready)

    def _tell_when_ready(self) -> None:
        self._poll = None
        if not self.gateway.status().accepting:
            self._poll = self.reactor.callLater(0.2, self._tell_when_ready)
            return
        told, self.told = self.told, None
        if told is not None:
            try:
                told.sendall(DRAIN + b"\r\n")
                log.info("takeover: accepting on every listener; the old gateway drains")
            except OSError as e:
                log.warn("takeover: could not tell the old gateway to drain: {e}", e=e)
            told.close()

    def stopService(self) -> None:
        super().stopService()
        if self._poll is not None and self._poll.active():
            self._poll.cancel()
        if self.port is not None:
            self.reactor.removeReader(self.port)
            self.port.sock.close()  # (no shutdown: a new process may hold it too)
            self.port = None
            if self._owns_path:
                try:
                    os.unlink(self.path)
                except OSError:
                    pass


@implementer(IReadDescriptor)
class _Accepting:
    """The takeover socket in the reactor: each connection accepted is handed to Twisted
    as a unix connection (``adoptStreamConnection``: it can send descriptors)."""

    def __init__(self, sock: socket.socket, reactor: Any, factory: Any) -> None:
        self.sock, self.reactor, self.factory = sock, reactor, factory

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        for _ in range(8):
            try:
                conn, _ = self.sock.accept()
            except OSError:  # EAGAIN: none left
                return
            with conn:
                self.reactor.adoptStreamConnection(conn.fileno(), socket.AF_UNIX, self.factory)

    def connectionLost(self, reason: object) -> None:
        pass

    def logPrefix(self) -> str:
        return "takeover"


def _bind_unix(path: str) -> socket.socket:
    """A listening unix socket on ``path``: a stale file (no process answers) is replaced;
    one a running gateway answers on is an error (start with --takeover)."""
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale
        else:
            raise TakeoverError(
                f"a gateway already answers on {path}: start the new one with --takeover"
            )
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)  # only this user may take the sockets over
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(8)
    return sock
