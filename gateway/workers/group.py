"""In the master, a listener's port: one ``SO_REUSEPORT`` socket per worker, bound in
``privilegedStartService`` (before privileges are dropped) and held while the master lives;
the workers accept on them."""

from __future__ import annotations

import socket
from collections.abc import Callable

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from gateway.choices import Affinity
from gateway.config.model import ListenerSettings
from gateway.handover import Inherited
from gateway.ports import ListenError
from gateway.workers.sockets import bind_group, close_all, steer_by_address

log = Logger()


class _Group:
    """The listening sockets of one address (one per worker); ``stopListening`` closes them."""

    def __init__(self, sockets: list[socket.socket], steered: bool) -> None:
        self.sockets = sockets
        self.steered = steered

    def stopListening(self) -> defer.Deferred[None]:
        close_all(self.sockets)
        self.sockets = []
        return defer.succeed(None)


class SocketGroupService(service.Service):
    """In the master, a listener's port: its sockets, bound in privilegedStartService and
    held while the master lives; the workers accept on them."""

    def __init__(
        self,
        count: int,
        affinity: Affinity,
        settings: ListenerSettings,
        serving: Callable[[str], int],
        inherited: Inherited | None = None,
    ) -> None:
        """``count`` sockets (one per worker); ``serving(listener)``: how many workers
        accept on them now; ``inherited``: sockets given to the process (systemd's, a
        takeover's), used rather than bound when one is on this address."""
        self.serving = serving
        self.inherited = inherited
        self.listener_name = settings.name
        self.bind_address = settings.bind
        self.count = count
        self.by_address = affinity == Affinity.ADDRESS or (
            affinity == Affinity.AUTO and not settings.front.proxy_protocol
        )
        self.port: _Group | None = None

    def bind(self) -> defer.Deferred[_Group]:
        try:
            return defer.succeed(self._listen())
        except ListenError as e:
            return defer.fail(e)

    def _listen(self) -> _Group:
        if self.port is not None:
            return self.port
        host, port = self.bind_address
        given = self.inherited.take(self.bind_address) if self.inherited is not None else []
        if given:  # the group as handed over (a takeover), or systemd's one socket shared
            sockets = given + [given[0].dup() for _ in range(self.count - len(given))]
            self.port = _Group(sockets, False)
            return self.port
        try:
            sockets = bind_group(host, port, self.count)
        except OSError as e:
            raise ListenError(
                self.listener_name, self.bind_address, CannotListenError(host, port, e)
            ) from None
        steered = steer_by_address(sockets) if self.by_address else False
        if self.by_address and not steered:
            log.warn(
                "listener {listener}: the kernel refused the address-affinity program; "
                "connections are spread by its hash (TLS sessions resume less often)",
                listener=self.listener_name,
            )
        self.port = _Group(sockets, steered)
        return self.port

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()

    def stopService(self) -> None:
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            port.stopListening()

    def filenos(self) -> list[int]:
        """The group's descriptors (what a takeover hands over: the group, whole)."""
        return [s.fileno() for s in self.port.sockets] if self.port is not None else []

    @property
    def accepting(self) -> bool:
        return self.port is not None and self.serving(self.listener_name) > 0

    @property
    def waiting_reason(self) -> str:
        if self.port is None:
            return "not listening"
        return "" if self.accepting else "no worker serving it yet"
