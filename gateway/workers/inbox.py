"""What the master has sent a worker (``WorkerInbox``: the files the configuration names,
the listening sockets, each listener's CRL snapshot and staple), and the parts a worker's
listeners are given over it: ``SharedCrl`` (the mapped snapshot, as a CRL source),
``SharedStaple`` and ``AdoptedEndpoint`` (the master's socket)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.protocols import amp
from zope.interface import implementer

from gateway.errors import GatewayError
from gateway.revocation.crl_cache import CrlCache
from gateway.revocation.snapshot import map_snapshot
from gateway.roles import OwnTLSEndpoint
from gateway.service import GatewayService
from gateway.workers import commands as c


class WorkerInbox:
    """What the master has sent this worker: files, sockets, CRLs and staples by listener."""

    def __init__(self, reactor: Any, index: int) -> None:
        self.reactor = reactor
        self.index = index
        self.files: dict[str, tuple[bytes, int]] = {}
        self._parts: dict[str, list[bytes]] = {}
        self.sockets: dict[tuple[str, str, int], int] = {}  # (listener, host, port) -> fd
        self.crls: dict[str, SharedCrlData] = {}
        self.staples: dict[str, StapleBox] = {}
        self.channel: amp.AMP | None = None  # the channel to the master, while it is open
        self.gateway: GatewayService | None = None  # once configured

    def file_part(self, path: str, mode: int, data: bytes, last: bool) -> None:
        """A piece of a file the configuration names; the file is whole with the last."""
        parts = self._parts.setdefault(path, [])
        parts.append(data)
        if last:
            self.files[path] = (b"".join(self._parts.pop(path)), mode)

    def socket(self, listener: str, host: str, port: int, fd: int) -> None:
        """A listening socket the master bound (one it sent before for the same address
        is closed)."""
        old = self.sockets.pop((listener, host, port), None)
        if old is not None:
            os.close(old)
        self.sockets[(listener, host, port)] = fd

    def crl(self, listener: str) -> SharedCrlData:
        if listener not in self.crls:
            self.crls[listener] = SharedCrlData(CrlCache(self.reactor, 0.0))
        return self.crls[listener]

    def staple(self, listener: str) -> StapleBox:
        return self.staples.setdefault(listener, StapleBox())

    def call(self, command: type[amp.Command], **kwargs: Any) -> defer.Deferred[Any]:
        if self.channel is None:
            return defer.fail(GatewayError("workers", "no channel to the master"))
        return self.channel.callRemote(command, **kwargs)


@attrs.define(eq=False)
class SharedCrlData:
    """A listener's CRLs as the master last sent them (one mapped snapshot)."""

    cache: CrlCache
    ready: defer.Deferred[None] = attrs.Factory(defer.Deferred)
    path: str | None = None
    current: SharedCrl | None = None  # the service of the listener's running generation

    def load(self, path: str) -> None:
        self.cache.replace(map_snapshot(path))  # the previous mapping goes with its indexes
        self.path = path
        if not self.ready.called:
            self.ready.callback(None)
        if self.current is not None:
            self.current.on_update()


class SharedCrl(service.Service):
    """In a worker, what a CrlService is in a single process: the cache the handshake reads
    (the master's snapshot), ``ready`` once the first one is in, and the master's services
    for certificates that name a distribution point."""

    def __init__(
        self,
        listener: str,
        data: SharedCrlData,
        call: Callable[..., defer.Deferred[Any]],
        on_update: Callable[..., None] = lambda crls=None: None,
    ) -> None:
        """``call(command, **arguments)``: asks the master."""
        self.name = f"crl:{listener}"
        self.listener = listener
        self.data = data
        self.cache = data.cache
        self.ready = data.ready
        self.call = call
        self.sources: dict[str, Any] = {}  # the master holds them
        self.on_update = on_update  # a new snapshot is in force
        data.current = self

    def status(self) -> tuple[()]:
        return ()  # the master reports the sources

    def refresh_now(self) -> defer.Deferred[tuple[()]]:
        return defer.succeed(())  # the master fetches

    def discover(self, url: str) -> None:
        self.call(c.Discover, listener=self.listener, url=url).addErrback(lambda _: None)

    def when_attempted(self, url: str) -> defer.Deferred[None]:
        d = self.call(c.WhenAttempted, listener=self.listener, url=url)
        return d.addBoth(lambda _: None)


@attrs.define(eq=False)
class StapleBox:
    der: bytes = b""
    sent: int = 0


class SharedStaple(service.Service):
    """In a worker, the stapling callback over the response the master validated."""

    def __init__(self, listener: str, box: StapleBox) -> None:
        self.name = f"ocsp:{listener}"
        self.box = box

    def install(self, ctx: Any) -> None:
        ctx.set_ocsp_server_callback(self.staple)

    def staple(self, connection: Any, data: object) -> bytes:
        der = self.box.der
        if der:
            self.box.sent += 1
        return der

    def first_attempt(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def status(self) -> None:
        return None  # the master reports the staple

    def refresh_now(self) -> defer.Deferred[None]:
        return defer.succeed(None)  # the master fetches


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """A listening socket the master bound, looked up when the port is opened and adopted
    (the reactor takes a duplicate; ours is closed, so a socket the worker no longer serves
    never holds connections)."""

    def __init__(
        self, inbox: WorkerInbox, listener: str, bind: tuple[str, int], tls: Any = None
    ) -> None:
        """``tls``: the listener's TLS connection creator, for a port whose transports run
        TLS of their own (``roles.OwnTLSEndpoint`` on the adopted socket); else Twisted's
        ``tcp.Port`` (a ws listener: plain)."""
        self.inbox = inbox
        self.bind = bind
        self.key = (listener, bind[0], bind[1])
        self.family = socket.AF_INET6 if ":" in bind[0] else socket.AF_INET
        self.tls = tls

    def listen(self, factory: Any) -> defer.Deferred[Any]:
        fd = self.inbox.sockets.pop(self.key, None)
        if fd is None:
            return defer.fail(GatewayError("workers", f"no socket from the master for {self.key}"))
        try:
            if self.tls is None:
                return defer.succeed(self.inbox.reactor.adoptStreamPort(fd, self.family, factory))
            given = socket.fromfd(fd, self.family, socket.SOCK_STREAM)
            return OwnTLSEndpoint(self.inbox.reactor, self.bind, self.tls, given).listen(factory)
        except Exception as e:
            return defer.fail(e)
        finally:
            os.close(fd)
