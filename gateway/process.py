"""What a process of the gateway is: the role its tree is given (``ProcessRole``: one
process, a master or a worker) and what it serves now (``GatewayState``: the configuration
in force and its listeners, which a master's worker pool reads)."""

from __future__ import annotations

import socket
from typing import Any

import attrs
from twisted.internet import task

from gateway.handover import Inherited
from gateway.listener import ListenerService
from gateway.prepare import Prepared
from gateway.roles import IListenerRole


@attrs.frozen
class ProcessRole:
    """What the top of a process's tree is given: its listeners' role, whether it serves
    the admin listener, answers signals and records reloads, and (a master) its workers:
    a service with ``status()``, ``configure_all(prepared)`` and ``stop(drain)``."""

    listeners: IListenerRole
    admin: bool = True
    signals: bool = True
    logs_reloads: bool = True
    stats_line: bool = True
    workers: Any = None
    # The process's one Cooperator (``timers.paced_cooperator``), shared with its role's
    # parts; the gateway service starts and stops it. None: one of the service's own.
    cooperator: task.Cooperator | None = None
    # Listening sockets given to this process (systemd, a takeover), and the connection to
    # the gateway it took over from (told to drain once this one accepts everywhere).
    inherited: Inherited = attrs.Factory(Inherited)
    told: socket.socket | None = None


@attrs.define(eq=False)
class GatewayState:
    """What a process serves now: the configuration in force and its listeners. The
    gateway service keeps it; a master's worker pool is given it to read (the listeners'
    sockets and parts, the configuration each new worker starts with)."""

    prepared: Prepared
    listeners: dict[str, ListenerService] = attrs.Factory(dict)
