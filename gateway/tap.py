"""twistd plumbing: ``twistd mqttgw --config PATH``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage

from gateway.errors import ConfigError, GatewayError
from gateway.prepare import prepare

if TYPE_CHECKING:
    from gateway.service import GatewayService

DEFAULT_CONFIG = "/etc/mqttgw/mqttgw.conf"


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "A TLS gateway for MQTT brokers: mutual TLS on the outside, the broker inside."
    optParameters = [["config", "c", DEFAULT_CONFIG, "Configuration file."]]
    optFlags = [
        [
            "takeover",
            "t",
            "Take the listening sockets over from the gateway running on takeover_socket, "
            "and have it drain once this one accepts on every listener.",
        ]
    ]

    def postOptions(self) -> None:
        # A configuration error is not a usage error: print the one line that names
        # file, line, key and reason, and exit non-zero before anything listens. (twistd
        # answers a UsageError with its whole help text and exit status 0.)
        try:
            self["prepared"] = prepare(self["config"])
        except ConfigError as e:
            print(f"mqttgw: {e}", file=sys.stderr)
            raise SystemExit(1) from None


def makeService(options: Options) -> service.MultiService:
    from twisted.internet import reactor

    from gateway.workers.master import make_master_service, worker_count

    _one_line_start_errors(reactor)
    prepared = options["prepared"]
    inherited, told = _inherited(prepared, bool(options["takeover"]))
    if worker_count(prepared.config.globals.workers) > 1:
        return make_master_service(prepared, reactor, inherited, told)
    return make_gateway_service(prepared, reactor, inherited=inherited, told=told)


def _inherited(prepared: Any, takeover: bool) -> tuple[Any, Any]:
    """The listening sockets systemd passed, and with ``--takeover`` those of the gateway
    running on ``takeover_socket`` (and the connection to tell it to drain)."""
    from twisted.internet import reactor

    from gateway.handover import Inherited, TakeoverError, from_systemd, take_over

    inherited, told = Inherited(from_systemd(reactor)), None
    if takeover:
        path = prepared.config.globals.takeover_socket
        try:
            if path is None:
                raise TakeoverError("--takeover needs takeover_socket in the configuration")
            sockets, told = take_over(path)
        except TakeoverError as e:
            print(f"mqttgw: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        inherited.add(sockets)
    return inherited, told


def make_gateway_service(
    prepared: Any,
    reactor: Any,
    http_agent: Any = None,
    crl_processor: Any = None,
    inherited: Any = None,
    told: Any = None,
) -> GatewayService:
    """The whole gateway in one process (``gateway.service.GatewayService``): one
    ListenerService per listener, the monitor, and the admin listener if configured. (With
    ``workers``, ``gateway.workers.master``.)"""
    from gateway import timers
    from gateway.handover import Inherited
    from gateway.process import ProcessRole
    from gateway.revocation.fetch import HttpFetcher
    from gateway.roles import SingleProcess
    from gateway.service import GatewayService
    from gateway.twisted_native import quiet_agent

    http = HttpFetcher(http_agent or quiet_agent(reactor), reactor)
    cooperator = timers.paced_cooperator(reactor)
    inherited = inherited if inherited is not None else Inherited()
    role = SingleProcess(reactor, http, cooperator.cooperate, crl_processor, inherited)
    process = ProcessRole(role, cooperator=cooperator, inherited=inherited, told=told)
    return GatewayService(prepared, reactor, process)


def _one_line_start_errors(reactor: Any) -> None:
    """An error of mqttgw's own that stops the start after the options were read (a port
    that cannot be bound, in ``privilegedStartService``: twistd calls it outside anything
    that could catch it) reaches the top of twistd as an exception: print its one line,
    not a traceback, to the real standard error (twistd's logging has taken over
    ``sys.stderr``) and to the log. twistd has already removed its pid file; exit status 1.
    For the start only: once the reactor runs, the previous hook is back."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if isinstance(value, GatewayError):
            Logger().critical("{error}; not started", error=str(value))
            stream = sys.__stderr__
            if stream is not None:
                stream.write(f"mqttgw: {value}\n")
                stream.flush()
        else:
            previous(kind, value, tb)

    sys.excepthook = hook

    def restore() -> None:
        if sys.excepthook is hook:
            sys.excepthook = previous

    reactor.callWhenRunning(restore)


__all__ = ["Options", "makeService", "make_gateway_service"]
