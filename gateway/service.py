"""The service tree: one service per listener (its port, its CRL and OCSP services), and the
monitor. ``make_gateway_service`` is the wiring; it takes what ``gateway.prepare`` loaded."""

from __future__ import annotations

import signal
import threading
from typing import Any

import treq
from OpenSSL import SSL
from twisted.application import service
from twisted.internet import defer, endpoints, task, threads
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory

from gateway import sdnotify
from gateway.clock import format_timestamp
from gateway.config.model import ConnectionLimits, GlobalSettings, ListenerSettings
from gateway.config.values import format_bind
from gateway.errors import GatewayError, describe_error
from gateway.monitor import Monitor
from gateway.prepare import Prepared, prepare
from gateway.proxy.admission import Admission, RefusalLog, address_key
from gateway.proxy.front import ProxyFrontFactory
from gateway.proxy.pool import Broker, BrokerPool
from gateway.proxy.relay import ClientProtocol, GatewayFactory, session_limits
from gateway.proxy.upstream import HealthChecker, PoolConnector
from gateway.revocation.checker import RevocationChecker
from gateway.revocation.crl_service import CrlCache, CrlService
from gateway.revocation.fetch import HttpFetcher
from gateway.revocation.ocsp_service import OcspStapler
from gateway.revocation.process import SubprocessProcessor
from gateway.status import (
    BrokerStatus,
    CrlCheckStatus,
    GatewayStatus,
    ListenerStats,
    ListenerStatus,
    ReloadStatus,
)
from gateway.tls.context import ServerConnectionCreator, build_context
from gateway.tls.material import TlsMaterial
from gateway.tls.verify import CertificateVerifier

log = Logger()

# If the first CRL round has not ended by then, the port accepts anyway (and the policy
# decides each client): a download may take crl_cache_http_timeout, processing may take
# as long again (the worker), and a persisted CRL is loaded first; plus a margin.
_READY_MARGIN = 30.0


def ready_timeout(crl_http_timeout: float) -> float:
    return crl_http_timeout * 2 + _READY_MARGIN


class ListenerTLSFactory(TLSMemoryBIOFactory):
    """TLS wrapping factory that admits each connection before any TLS work: connection
    caps and rates (``gateway.proxy.admission``); a refused connection is closed at once
    and counted, logged one by one up to a threshold per interval, then summarised."""

    noisy = False

    def __init__(
        self,
        creator: ServerConnectionCreator,
        wrapped: GatewayFactory,
        limits: ConnectionLimits,
        reactor: Any,
    ) -> None:
        super().__init__(creator, False, wrapped, clock=reactor)
        self.gateway = wrapped
        self.reactor = reactor
        self.admission = Admission(
            limits.max_connections,
            limits.max_connections_per_ip,
            limits.max_conn_rate,
            limits.max_conn_rate_per_ip,
            reactor.seconds(),
        )
        self.per_address = self.admission.per_address
        self.refusals = RefusalLog(REFUSALS_LOGGED_PER_INTERVAL)
        self._summary: Any = None  # the pending summary call, while refusals are suppressed
        self._keys: dict[Any, str] = {}  # admitted protocol -> its address key

    def buildProtocol(self, addr: Any) -> Any:
        host = getattr(addr, "host", str(addr))
        key = address_key(host) if self.per_address else ""
        refused = self.admission.admit(key, self.reactor.seconds())
        if refused is not None:
            self._refuse(refused, key or host, f"{host}:{getattr(addr, 'port', '')}")
            return None
        protocol = super().buildProtocol(addr)
        if protocol is None:  # pragma: no cover - the wrapped factory refused
            self.admission.release(key)
            return None
        self._keys[protocol] = key
        return protocol

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        key = self._keys.pop(p, None)
        if key is not None:
            self.admission.release(key)

    def _refuse(self, reason: str, key: str, peer: str, detail: str | None = None) -> None:
        self.gateway.stats.refuse(reason)
        if self.refusals.note(reason, key):
            log.warn(
                "refused {listener} peer={peer} reason={reason}: {why}",
                listener=self.gateway.name,
                peer=peer,
                reason=reason,
                why=detail or _REFUSAL_TEXT[reason],
            )
        elif self._summary is None:
            self._summary = self.reactor.callLater(REFUSAL_SUMMARY_INTERVAL, self._summarise)

    def _summarise(self) -> None:
        self._summary = None
        self.admission.prune(self.reactor.seconds())
        text = self.refusals.summary()
        if text is not None:
            log.warn(
                "refused {listener}: {summary} in the last {interval:.0f}s",
                listener=self.gateway.name,
                summary=text,
                interval=REFUSAL_SUMMARY_INTERVAL,
            )

    def stop(self) -> None:
        """Log what is still suppressed (at shutdown)."""
        if self._summary is not None and self._summary.active():
            self._summary.cancel()
            self._summarise()


# Refusals before TLS: this many per interval are logged one by one, the rest summarised.
REFUSALS_LOGGED_PER_INTERVAL = 10
REFUSAL_SUMMARY_INTERVAL = 10.0
_REFUSAL_TEXT = {
    "too_many_connections": "listener at max_connections",
    "too_many_connections_per_ip": "address at max_connections_per_ip",
    "rate_limited": "listener above max_conn_rate",
    "rate_limited_per_ip": "address above max_conn_rate_per_ip",
}


def drain(
    factory: ListenerTLSFactory, reactor: Any, seconds: float, by: str, why: str
) -> defer.Deferred[int]:
    """Let the factory's connections end by themselves for ``seconds``, then end the rest
    (``ClientProtocol.stop``: each relayed session logged as closed by ``by``), and abort
    whatever has not closed two seconds later. Fires with the number the gateway ended."""
    done: defer.Deferred[int] = defer.Deferred()
    deadline = reactor.seconds() + seconds
    ended = [0]
    stage = ["wait"]

    def tick() -> None:
        if not factory.protocols:
            poll.stop()
            done.callback(ended[0])
            return
        now = reactor.seconds()
        if stage[0] == "wait" and now >= deadline:
            stage[0] = "stopping"
            for tls in list(factory.protocols):
                client = getattr(tls, "wrappedProtocol", None)
                if isinstance(client, ClientProtocol):
                    ended[0] += 1
                    client.stop(by, why)
        elif stage[0] == "stopping" and now >= deadline + _ABORT_AFTER:
            stage[0] = "aborting"
            for tls in list(factory.protocols):
                tls.transport.abortConnection()

    poll = task.LoopingCall(tick)
    poll.clock = reactor
    poll.start(_DRAIN_POLL, now=True)
    return done


_DRAIN_POLL = 0.1
_ABORT_AFTER = 2.0  # after a stop: time for close_notify and the broker side to close


def _crl_globals(g: GlobalSettings) -> tuple[Any, ...]:
    return (g.crl_refresh_interval, g.crl_cache_dir)


def _bounded(d: defer.Deferred[Any], seconds: float, reactor: Any) -> defer.Deferred[Any]:
    """``d``, but at most ``seconds`` long; never fails (a reload goes on either way)."""
    waiter: defer.Deferred[Any] = defer.Deferred()

    def done(result: object = None) -> None:
        if timer.active():
            timer.cancel()
        if not waiter.called:
            waiter.callback(None)

    timer = reactor.callLater(seconds, done)
    d.addBoth(done)
    return waiter


class _QuietHTTP11ClientFactory(_HTTP11ClientFactory):
    noisy = False  # no "Starting factory" line for every CRL or OCSP fetch


def quiet_http_client(reactor: Any) -> treq.client.HTTPClient:
    """treq's HTTP client on the given reactor, without per-connection log noise."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    # HTTPConnectionPool takes no factory argument; this private attribute is the only way
    # to silence the per-connection "Starting factory" lines.
    pool._factory = _QuietHTTP11ClientFactory
    return treq.client.HTTPClient(Agent(reactor, pool=pool))


class ListenError(GatewayError):
    """A listener's address cannot be bound (in use, not ours, not allowed)."""

    def __init__(self, listener: str, bind: tuple[str, int], error: CannotListenError) -> None:
        cause = error.socketError
        text = getattr(cause, "strerror", None) or str(cause)
        super().__init__(
            "listen", f"cannot listen on {format_bind(bind)}: {text[:1].lower()}{text[1:]}"
        )
        self.listener = listener


class GatewayService(service.MultiService):
    """The top of the tree: the listeners, the monitor, the admin listener; status, refresh
    and reload for the whole gateway.

    A listener that cannot bind stops the start before anything else starts, as a
    ConfigError at the line that declared it. SIGTERM stops cleanly (exit 0); SIGHUP and
    ``POST /reload`` reload.
    """

    handles_signals = True  # SIGHUP reloads, SIGTERM stops (a worker leaves both to its master)
    logs_reloads = True  # "reload applied" and ReloadStatus (a worker's master does both)

    def __init__(self, prepared: Prepared, reactor: Any) -> None:
        super().__init__()
        self.prepared = prepared
        self.config = prepared.config
        self.reactor = reactor
        self.started = reactor.seconds()
        self.listeners: dict[str, ListenerService] = {}
        self.reloads = ReloadStatus()
        self._reloading: defer.Deferred[dict[str, Any]] | None = None
        self.monitor = Monitor(
            reactor,
            self.config.globals.stats_log_interval,
            lambda: [ls.status() for ls in self.listeners.values()],
        )
        self.admin: PortService | None = None
        self.admin_resource: Any = None

    def admin_port(self, prepared: Prepared) -> PortService | None:
        """The admin listener's port service for ``prepared`` (not yet bound), or None."""
        settings = prepared.config.globals
        if settings.admin_listen is None:
            return None
        from gateway.admin.web import admin_site

        site = admin_site(self, prepared.admin_token, settings.admin_open_read, self.reactor)
        host, port = settings.admin_listen
        endpoint = (
            endpoints.TCP6ServerEndpoint(self.reactor, port, interface=host)
            if ":" in host
            else endpoints.TCP4ServerEndpoint(self.reactor, port, interface=host)
        )
        service_ = PortService(endpoint, (host, port), site, None, self.reactor, 0.0, ADMIN)
        service_.setName("admin")
        return service_

    def set_admin(self, admin: PortService | None) -> None:
        old, self.admin = self.admin, admin
        self.admin_resource = admin.factory.resource if admin is not None else None
        if old is not None:
            old.disownServiceParent()  # stops listening
        if admin is not None:
            admin.setServiceParent(self)

    def new_listener(
        self, listener: ListenerSettings, material: TlsMaterial, globals_: GlobalSettings
    ) -> ListenerService:
        """The service of one listener (a master's and a worker's differ)."""
        return ListenerService(listener, material, globals_, self.reactor)

    def add_listener(self, listener_service: ListenerService) -> None:
        self.listeners[listener_service.listener.name] = listener_service
        listener_service.setServiceParent(self)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except ListenError as e:
            if e.listener == ADMIN:
                raise self.config.global_error("admin.listen", e.detail) from None
            raise self.config.error(e.listener, "", e.detail) from None

    def startService(self) -> None:
        super().startService()
        if self.handles_signals:
            self.reactor.callWhenRunning(_install_signal_handlers, self.reactor, self)  # first
        for warning in self.prepared.warnings:
            log.warn("{warning}", warning=warning)
        self._notified_ready = False
        self._ready_poll = task.LoopingCall(self._notify_when_ready)
        self._ready_poll.clock = self.reactor
        # Polled from when the reactor runs: by then SIGHUP is handled (systemd may send it
        # as soon as it has READY=1; before the handler, the signal would end the process).
        self.reactor.callWhenRunning(self._ready_poll.start, 0.2, True)

    def _notify_when_ready(self) -> None:
        """systemd (Type=notify) learns READY=1 once every listener accepts."""
        try:
            ok, _ = self.status().ready
        except Exception:
            log.failure("readiness check failed")
            return
        if ok:
            self._ready_poll.stop()
            if not self._notified_ready:
                self._notified_ready = True
                if sdnotify.notify("READY=1"):
                    log.info("told systemd: ready")

    def stopService(self) -> defer.Deferred[Any] | None:
        sdnotify.notify("STOPPING=1")
        poll = getattr(self, "_ready_poll", None)
        if poll is not None and poll.running:
            poll.stop()
        return super().stopService()

    # -- what the admin listener and the CLI read ---------------------------------------------

    def status(self) -> GatewayStatus:
        return GatewayStatus(
            version=_version(),
            config_path=self.config.path,
            started=self.started,
            now=self.reactor.seconds(),
            listeners=tuple(ls.status() for ls in self.listeners.values()),
            reactor_max_lag=self.monitor.max_lag_ever,
            reactor_lag=self.monitor.lag.snapshot(),
            reload=self.reloads,
        )

    def alive(self) -> tuple[bool, str]:
        """The reactor turns: the monitor's heartbeat (every second) ran within the last 5
        seconds."""
        quiet = self.reactor.seconds() - self.monitor.last_tick
        if quiet > LIVE_LIMIT:
            return False, f"the event loop has not turned for {quiet:.1f}s"
        return True, "alive"

    def refresh(self, listener: str | None) -> defer.Deferred[dict[str, Any]]:
        """Fetch CRLs and OCSP now (one listener or all); fires with what happened."""
        targets = [ls for name, ls in self.listeners.items() if listener in (None, name)]
        log.info("refresh asked for {which}", which=listener or "every listener")
        runs: list[defer.Deferred[Any]] = []
        for ls in targets:
            if ls.crl_service is not None:
                runs.append(ls.crl_service.refresh_now())
            if ls.stapler is not None:
                runs.append(ls.stapler.refresh_now())

        def report(_: object) -> dict[str, Any]:
            out: dict[str, Any] = {"ok": True, "listeners": {}}
            for ls in targets:
                entry: dict[str, Any] = {}
                if ls.crl_service is not None:
                    entry["crl"] = [
                        {
                            "url": src.url,
                            "result": src.last_result,
                            "error": src.last_error,
                            "crls": [
                                {"issuer": c.issuer, "number": c.number, "entries": c.entries}
                                for c in src.crls
                            ],
                        }
                        for src in ls.crl_service.status()
                    ]
                if ls.stapler is not None:
                    o = ls.stapler.status()
                    entry["ocsp"] = {
                        "status": o.status,
                        "result": o.last_result,
                        "error": o.last_error,
                        "next_update": format_timestamp(o.next_update),
                    }
                out["listeners"][ls.listener.name] = entry or "nothing to refresh"
            return out

        return defer.DeferredList(runs, consumeErrors=True).addCallback(report)

    # -- reload -----------------------------------------------------------------------------

    def reload(self, origin: str) -> defer.Deferred[dict[str, Any]]:
        """Re-read the configuration file and every file it names (in a thread), and apply
        it; an invalid one is refused and the running one stays in force. Fires with
        {"ok", "changes"} or {"ok": False, "error"}; one reload at a time."""
        if self._reloading is not None:
            return defer.succeed({"ok": False, "error": "a reload is already in progress"})
        sdnotify.notify("RELOADING=1")
        log.info("reload ({origin}): reading {path}", origin=origin, path=self.config.path)
        pool = self.reactor.getThreadPool()
        read: defer.Deferred[Prepared] = threads.deferToThreadPool(
            self.reactor, pool, prepare, self.config.path
        )
        d: defer.Deferred[dict[str, Any]] = read.addCallback(self._apply)
        d.addErrback(self._refused)
        self._reloading = d

        def done(result: dict[str, Any]) -> dict[str, Any]:
            self._reloading = None
            sdnotify.notify("READY=1")
            return result

        return d.addBoth(done)

    def _refused(self, reason: Failure) -> dict[str, Any]:
        error = reason.value
        if not isinstance(error, GatewayError):
            log.failure("reload failed unexpectedly", reason)
        text = str(error) if isinstance(error, GatewayError) else describe_error(error)  # type: ignore[arg-type]
        log.error("reload refused: {error}; the running configuration stays in force", error=text)
        r = self.reloads
        self.reloads = ReloadStatus(
            r.count, r.failures + 1, self.reactor.seconds(), "failed", text, ()
        )
        return {"ok": False, "error": text}

    def _apply(self, prepared: Prepared) -> defer.Deferred[dict[str, Any]]:
        config, old = prepared.config, self.config
        new_names = {ls.name for ls in config.listeners}
        changes: list[str] = []
        # 1. Everything that can fail is done first: binding new addresses. If one cannot
        #    be bound, the ports bound so far are closed and the reload is refused.
        added: list[ListenerService] = []
        moved: dict[str, PortService] = {}
        bound: list[PortService] = []
        try:
            for listener in config.listeners:
                current = self.listeners.get(listener.name)
                if current is None:
                    ls = self.new_listener(
                        listener, prepared.materials[listener.name], config.globals
                    )
                    ls.port_service._listen()
                    bound.append(ls.port_service)
                    added.append(ls)
                else:
                    port = current.bind_for(listener)
                    if port is not None:
                        bound.append(port)
                        moved[listener.name] = port
            new_admin: PortService | None | bool = False  # False: the admin listener stays
            if config.globals.admin_listen != old.globals.admin_listen:
                new_admin = self.admin_port(prepared)
                if new_admin is not None:
                    new_admin._listen()
                    bound.append(new_admin)
        except ListenError as e:
            for port in bound:
                if port.port is not None:
                    port.port.stopListening()
            if e.listener == ADMIN:
                raise config.global_error("admin.listen", e.detail) from None
            raise config.error(e.listener, "", e.detail) from None
        # 2. Apply: removed listeners drain, kept ones reconfigure, new ones start.
        waits: list[defer.Deferred[Any]] = []
        for name in [n for n in self.listeners if n not in new_names]:
            ls = self.listeners.pop(name)
            changes.append(f"listener {name} removed (drain {config.globals.reload_drain:g}s)")
            ls.retire(config.globals.reload_drain)
        for listener in config.listeners:
            current = self.listeners.get(listener.name)
            if current is None:
                continue
            material = prepared.materials[listener.name]
            what = current.changes(listener, material, config.globals)
            if not what and current.globals.shutdown_drain == config.globals.shutdown_drain:
                continue
            if what:
                changes.append(f"listener {listener.name}: {', '.join(what)}")
            waits.append(
                current.reconfigure(listener, material, config.globals, moved.get(listener.name))
            )
        for ls in added:
            changes.append(f"listener {ls.listener.name} added on {format_bind(ls.listener.bind)}")
            self.add_listener(ls)
        for key in ("stats_log_interval", "shutdown_drain", "reload_drain"):
            if getattr(old.globals, key) != getattr(config.globals, key):
                changes.append(
                    f"{key} {getattr(old.globals, key):g}s -> {getattr(config.globals, key):g}s"
                )
        if old.globals.stats_log_interval != config.globals.stats_log_interval:
            self.monitor.set_interval(config.globals.stats_log_interval)
        if new_admin is not False:
            self.set_admin(new_admin)  # type: ignore[arg-type]
            where = config.globals.admin_listen
            changes.append(f"admin listener {'on ' + format_bind(where) if where else 'off'}")
        elif self.admin_resource is not None:
            self.admin_resource.token = prepared.admin_token
            self.admin_resource.open_read = config.globals.admin_open_read
            if old.globals.admin_token_file != config.globals.admin_token_file:
                changes.append("admin token")
        self.prepared, self.config = prepared, config
        for warning in prepared.all_warnings():
            log.warn("{warning}", warning=warning)

        def applied(_: object) -> dict[str, Any]:
            if not self.logs_reloads:
                return {"ok": True, "changes": changes}
            r = self.reloads
            self.reloads = ReloadStatus(
                r.count + 1, r.failures, self.reactor.seconds(), "ok", None, tuple(changes)
            )
            log.info(
                "reload applied: {changes}",
                changes="; ".join(changes) if changes else "nothing changed",
            )
            return {"ok": True, "changes": changes}

        done = defer.gatherResults(waits).addCallback(lambda _: self._after_apply(prepared))
        return done.addCallback(applied)

    def _after_apply(self, prepared: Prepared) -> defer.Deferred[Any] | None:
        """Once this process applied a reload: a master has its workers apply it too."""
        return None


ADMIN = "<admin>"  # the PortService name of the admin listener
LIVE_LIMIT = 5.0


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("mqttgw")
    except Exception:
        return "dev"


def _install_signal_handlers(reactor: Any, gateway: GatewayService) -> None:
    """SIGHUP reloads. SIGTERM stops cleanly (see below)."""
    _stop_cleanly_on_sigterm(reactor)
    if threading.current_thread() is not threading.main_thread():
        return

    def on_hup(signum: int, frame: Any) -> None:
        reactor.callFromThread(gateway.reload, "SIGHUP")

    signal.signal(signal.SIGHUP, on_hup)


def _stop_cleanly_on_sigterm(reactor: Any) -> None:
    """SIGTERM is the ordinary way to stop a service (systemd, docker, kill): stop the
    reactor (which runs the graceful drain) and exit 0. Twisted's own handler makes twistd
    end by re-raising the signal, which service managers read as a failure."""
    if not getattr(reactor, "running", False) or threading.current_thread() is not (
        threading.main_thread()
    ):
        return

    def on_term(signum: int, frame: Any) -> None:
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, on_term)


class PortService(service.Service):
    """Binds the listener's port in privilegedStartService (before twistd drops privileges).

    Until ``ready`` fires (the first CRL round is done), the port does not accept:
    connections wait in the kernel's backlog instead of meeting an empty CRL cache.
    """

    def __init__(
        self,
        endpoint: Any,
        bind: tuple[str, int],
        factory: Any,
        ready: defer.Deferred[None] | None,
        reactor: Any,
        ready_timeout: float,
        listener_name: str = "?",
    ) -> None:
        self.listener_name = listener_name
        self.endpoint = endpoint
        self.bind = bind
        self.factory = factory
        self.ready = ready
        self.reactor = reactor
        self.ready_timeout = ready_timeout
        self.port: Any = None
        self._ready_seen = False
        self._waiting = False  # bound, but not reading until the first CRL round is done

    @property
    def accepting(self) -> bool:
        """Whether the port accepts connections now (what /ready reports)."""
        return bool(self.running) and self.port is not None and not self._waiting

    @property
    def waiting_reason(self) -> str:
        if self.port is None or not self.running:
            return "not listening"
        return "waiting for the first CRL round" if self._waiting else ""

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()
        if self._ready_seen:
            self.port.startReading()

    def _listen(self) -> None:
        if self.port is not None:
            return
        result: list[Any] = []
        self.endpoint.listen(self.factory).addBoth(result.append)
        if isinstance(result[0], Failure):
            failure = result[0]
            if isinstance(failure.value, CannotListenError):
                raise ListenError(self.listener_name, self.bind, failure.value) from None
            failure.raiseException()  # a port that cannot be bound stops start-up
        self.port = result[0]
        if self.ready is not None and not self.ready.called:
            self.port.stopReading()
            self._waiting = True
            timer = self.reactor.callLater(self.ready_timeout, self._accept, "timeout")

            def on_ready(result: None) -> None:
                if timer.active():
                    timer.cancel()
                    self._accept("ready")

            self.ready.addCallback(on_ready)

    def _accept(self, why: str) -> None:
        if why == "timeout":
            log.warn("accepting connections before the first CRL round finished (timeout)")
        self._waiting = False
        if self.running and self.port is not None:
            self.port.startReading()
        else:
            self._ready_seen = True  # startService will resume accepting

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        inner = getattr(self.factory, "wrapped", self.factory)
        if isinstance(inner, ListenerTLSFactory):
            inner.stop()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None


class ListenerService(service.MultiService):
    """One listener: its context, its port, its counters, its CRL and OCSP services."""

    checks_brokers = True  # active health checks of the broker pool (a master runs none)

    def __init__(
        self,
        listener: ListenerSettings,
        material: TlsMaterial,
        globals_: GlobalSettings,
        reactor: Any,
        http_client: Any = None,
        crl_processor: Any = None,
    ) -> None:
        super().__init__()
        self.setName(listener.name)
        self.listener = listener
        self.material = material
        self.reactor = reactor
        self.shutdown_drain = globals_.shutdown_drain
        self.stats = ListenerStats(listener.name)
        self.globals = globals_
        self._http = HttpFetcher(http_client or quiet_http_client(reactor), reactor)
        self._processor = crl_processor
        self.crl_service, self.revocation = self._build_crl(listener, material, globals_, None)
        if self.crl_service is not None:
            self.crl_service.setServiceParent(self)
        self.verifier = CertificateVerifier(self.revocation)
        self.stapler = self._build_stapler(listener, material, globals_)
        if self.stapler is not None:
            self.stapler.setServiceParent(self)
        self.creator = ServerConnectionCreator(self.build_context())
        self.pool, self.connector, self.health = self._build_upstream(listener, material)
        self.factory = GatewayFactory(
            listener.name,
            listener.limits,
            listener.upstream,
            reactor,
            self.connector,
            self.stats,
            self.revocation,
        )
        self.factory.identity = listener.identity
        if self.crl_service is not None:
            self.crl_service.on_update = self.revocation_updated
        self.tls_factory = ListenerTLSFactory(self.creator, self.factory, listener.limits, reactor)
        self.port_service = self._port_service(listener)
        self.port_service.setServiceParent(self)
        self._logged = False
        self._generation = 0  # reloads that replaced a service (unique child names)

    # -- building blocks (at start, and again on a reload) -----------------------------------

    def refuse_front(self, reason: str, peer: str, detail: str) -> None:
        """A connection refused before TLS by the PROXY header reader."""
        self.tls_factory._refuse(reason, peer.rpartition(":")[0], peer, detail)

    def _endpoint(self, listener: ListenerSettings) -> Any:
        """Where the listener's port comes from: here, a bind (a worker adopts a socket)."""
        host, port = listener.bind
        if ":" in host:
            return endpoints.TCP6ServerEndpoint(self.reactor, port, interface=host)
        return endpoints.TCP4ServerEndpoint(self.reactor, port, interface=host)

    def revocation_updated(self, _crls: object = None) -> None:
        """New CRLs are in force: sweep the live sessions (a master tells its workers)."""
        self.factory.sweep_revoked()

    def _port_service(self, listener: ListenerSettings) -> PortService:
        server_endpoint = self._endpoint(listener)
        factory: Any = self.tls_factory
        if listener.front.proxy_protocol:
            factory = ProxyFrontFactory(
                self.tls_factory,
                listener.front.proxy_protocol_timeout,
                self.reactor,
                self.refuse_front,
            )
        return PortService(
            server_endpoint,
            listener.bind,
            factory,
            self.crl_service.ready if self.crl_service is not None else None,
            self.reactor,
            ready_timeout(listener.crl.http_timeout) if listener.crl is not None else 0.0,
            listener.name,
        )

    def _build_upstream(
        self, listener: ListenerSettings, material: TlsMaterial
    ) -> tuple[BrokerPool, PoolConnector, HealthChecker | None]:
        """The broker pool, its connector (plain or TLS) and its health checks."""
        name = listener.name

        def changed(broker: Broker, why: str) -> None:
            level = log.info if broker.up else log.warn
            level(
                "upstream {listener} broker {broker} is {state}: {why}",
                listener=name,
                broker=broker.name,
                state="up" if broker.up else "DOWN",
                why=why,
            )

        up = listener.upstream
        pool = BrokerPool(up.addresses, up.balance, up.down_time, changed)
        connector = PoolConnector(self.reactor, up, pool, material.upstream)
        health = None
        if (
            self.checks_brokers
            and up.check_interval > 0
            and (len(up.addresses) > 1 or up.check == "mqtt")
        ):
            health = HealthChecker(connector, name)
            health.setServiceParent(self)
        return pool, connector, health

    def _build_crl(
        self,
        listener: ListenerSettings,
        material: TlsMaterial,
        globals_: GlobalSettings,
        cache: CrlCache | None,
    ) -> tuple[CrlService | None, RevocationChecker | None]:
        if listener.crl is None:
            return None, None
        if cache is None:
            cache = CrlCache(self.reactor, listener.crl.grace_period)
        assert material.ca_pem is not None  # CRL checking needs verify_peer and its CAs
        crl_service = CrlService(
            listener.name,
            listener.crl,
            globals_.crl_refresh_interval,
            globals_.crl_cache_dir,
            self.reactor,
            self._http,
            self._processor or SubprocessProcessor(self.reactor),
            cache,
            material.ca_pem,
        )
        checker = RevocationChecker(
            cache, listener.crl, crl_service, self.reactor, material.issuers
        )
        return crl_service, checker

    def _build_stapler(
        self, listener: ListenerSettings, material: TlsMaterial, globals_: GlobalSettings
    ) -> OcspStapler | None:
        if listener.ocsp is None:
            return None
        assert material.ocsp is not None  # found, or the configuration was refused
        return OcspStapler(
            listener.name,
            listener.ocsp,
            globals_.ocsp_cache_dir,
            self.reactor,
            self._http,
            material.ocsp,
        )

    # -- reload --------------------------------------------------------------------------

    def changes(
        self, new: ListenerSettings, material: TlsMaterial, globals_: GlobalSettings
    ) -> list[str]:
        """What a reload would change in this listener, in words (empty: nothing)."""
        old, out = self.listener, []
        for field in ("bind", "tls", "limits", "upstream", "crl", "ocsp", "identity", "front"):
            if getattr(old, field) != getattr(new, field):
                out.append(f"{field} settings" if field not in ("bind", "upstream") else field)
        if material.chain[0] != self.material.chain[0]:
            out.append(
                f"certificate (serial {self.material.chain[0].serial_number:X} -> "
                f"{material.chain[0].serial_number:X})"
            )
        elif [c for c in material.chain] != [c for c in self.material.chain]:
            out.append("certificate chain")
        if material.ca_pem != self.material.ca_pem:
            out.append("CA bundle")
        if _crl_globals(globals_) != _crl_globals(self.globals) and new.crl is not None:
            out.append("global CRL settings")
        if globals_.ocsp_cache_dir != self.globals.ocsp_cache_dir and new.ocsp is not None:
            out.append("ocsp_cache.dir")
        return out

    def bind_for(self, new: ListenerSettings) -> PortService | None:
        """For a reload that moves this listener: a port service on the new address, bound
        now (ListenError if it cannot be). None if the address stays."""
        if new.bind == self.listener.bind:
            return None
        port = self._port_service(new)
        port._listen()
        return port

    def reconfigure(
        self,
        new: ListenerSettings,
        material: TlsMaterial,
        globals_: GlobalSettings,
        new_port: PortService | None,
    ) -> defer.Deferred[None]:
        """Apply a reload to this listener; live connections are untouched.

        New CRL and OCSP services (only where their settings, the CA bundle or the server
        certificate changed) are started first and swapped in once their first round is
        over (bounded), so new handshakes never meet an empty cache; CRLs already held stay
        in force where the CA bundle did not change. Then the new context serves the next
        handshake, the new limits and upstream the next connection, and a moved listener's
        old port closes.
        """
        old_listener, old_material, old_globals = self.listener, self.material, self.globals
        ca_same = material.ca_pem == old_material.ca_pem
        crl_changed = (
            new.crl != old_listener.crl
            or not ca_same
            or _crl_globals(globals_) != _crl_globals(old_globals)
        )
        ocsp_changed = (
            new.ocsp != old_listener.ocsp
            or material.chain[0] != old_material.chain[0]
            or material.ocsp != old_material.ocsp
            or globals_.ocsp_cache_dir != old_globals.ocsp_cache_dir
        )
        waits: list[defer.Deferred[Any]] = []
        crl_service, checker = self.crl_service, self.revocation
        if crl_changed:
            cache = None
            if ca_same and self.revocation is not None and new.crl is not None:
                cache = self.revocation.cache  # CRLs validated against the same CAs
                cache._grace = new.crl.grace_period
                keep = set(new.crl.urls)
                for url in self.crl_service.sources if self.crl_service else ():
                    if url not in keep and not new.crl.from_cert:
                        cache.forget_source(url)
            crl_service, checker = self._build_crl(new, material, globals_, cache)
            if crl_service is not None:
                self._generation += 1  # the old service runs until the swap: another name
                crl_service.setName(f"{crl_service.name}#{self._generation}")
                crl_service.setServiceParent(self)
                if cache is None:  # a new CA: wait for its CRLs before using them
                    assert new.crl is not None
                    waits.append(
                        _bounded(
                            crl_service.ready, ready_timeout(new.crl.http_timeout), self.reactor
                        )
                    )
        stapler = self.stapler
        if ocsp_changed:
            stapler = self._build_stapler(new, material, globals_)
            if stapler is not None:
                self._generation += 1
                stapler.setName(f"{stapler.name}#{self._generation}")
                stapler.setServiceParent(self)
                assert new.ocsp is not None
                waits.append(
                    _bounded(
                        stapler.first_attempt(),
                        new.ocsp.http_timeout + 5,
                        self.reactor,
                    )
                )

        def swap(_: object) -> None:
            old_crl, old_stapler = self.crl_service, self.stapler
            self.listener, self.material, self.globals = new, material, globals_
            self.shutdown_drain = globals_.shutdown_drain
            self.crl_service, self.revocation, self.stapler = crl_service, checker, stapler
            self.verifier = CertificateVerifier(checker)
            self.creator.context = self.build_context()  # the next handshake on
            factory = self.factory
            factory.revocation = checker
            factory.session_limits = session_limits(new.limits)
            if new.upstream != old_listener.upstream or material.upstream is not None:
                if self.health is not None:
                    self.health.disownServiceParent()
                self.pool, self.connector, self.health = self._build_upstream(new, material)
                factory.connect_upstream = self.connector
            factory.upstream_name = format_bind(new.upstream.address)
            factory.upstream_proxy_protocol = new.upstream.proxy_protocol
            factory.identity = new.identity
            if crl_service is not None:
                crl_service.on_update = self.revocation_updated
            if new.front != old_listener.front and new_port is None:
                # Same address, a PROXY header now expected (or no longer): the listening
                # socket stays, new connections get the new front factory.
                front = self._port_service(new).factory
                self.port_service.factory = front
                if self.port_service.port is not None:
                    self.port_service.port.factory = front
            self.tls_factory.admission.reconfigure(new.limits)
            self.tls_factory.per_address = self.tls_factory.admission.per_address
            for old, current in ((old_crl, crl_service), (old_stapler, stapler)):
                if old is not None and old is not current:
                    old.disownServiceParent()
            if new_port is not None:
                old_port = self.port_service
                self._generation += 1
                new_port.setName(f"port#{self._generation}")
                new_port.setServiceParent(self)
                self.port_service = new_port
                old_port.disownServiceParent()  # stops listening; accepted connections stay
            if crl_service is not old_crl and crl_service is not None:
                self.revocation_updated()  # live sessions against the new revocation data

        return defer.gatherResults(waits).addCallback(swap)

    def retire(self, drain_seconds: float) -> defer.Deferred[Any]:
        """A reload removed this listener: stop accepting now, let its connections end for
        ``drain_seconds``, close the rest (closed_by=reload), then stop its services."""
        self.port_service.disownServiceParent()
        count = len(self.tls_factory.protocols)
        log.info(
            "listener {listener} removed: stopped accepting; {count} connection(s) get "
            "{drain:g}s to end",
            listener=self.listener.name,
            count=count,
            drain=drain_seconds,
        )
        drained = drain(
            self.tls_factory,
            self.reactor,
            drain_seconds,
            "reload",
            "its listener was removed by a reload",
        )
        return drained.addCallback(lambda _: self.disownServiceParent())

    def status(self) -> ListenerStatus:
        """Everything an operator (or a status endpoint) wants about this listener, in one
        record: counters, each CRL source's state, the OCSP staple's state."""
        crl = None
        if self.crl_service is not None and self.revocation is not None:
            crl = CrlCheckStatus(
                held=len(self.revocation.cache.infos()),
                counts=dict(self.revocation.counts),
                sources=self.crl_service.status(),
            )
        ocsp = self.stapler.status() if self.stapler is not None else None
        tls = self.listener.tls
        return ListenerStatus(
            self.stats.snapshot(),
            crl,
            ocsp,
            bind=format_bind(self.listener.bind),
            upstream=format_bind(self.listener.upstream.address),
            accepting=self.port_service.accepting,
            not_accepting=self.port_service.waiting_reason,
            tls=f"{tls.profile} ({','.join(tls.versions)})",
            brokers=tuple(
                BrokerStatus(b.name, b.up, b.active, b.sessions, b.failures, b.last_error)
                for b in self.pool.brokers
            ),
        )

    def build_context(self) -> SSL.Context:
        """A new context for this listener, with the stapling callback installed.

        pyOpenSSL freezes a context once its first connection exists, so the callback goes
        in before the context is handed to the connection creator (here, and on a rebuild).
        """
        ctx = build_context(self.listener.name, self.listener.tls, self.material, self.verifier)
        if self.stapler is not None:
            self.stapler.install(ctx)
        return ctx

    def stopService(self) -> defer.Deferred[Any]:
        """Graceful stop: the port stops accepting (its service stops first), the CRL and
        OCSP services stop, live sessions get ``shutdown_drain`` to end, then are closed."""
        stopped = defer.maybeDeferred(super().stopService)
        tls_factory = self.port_service.factory
        count = len(tls_factory.protocols)
        if count:
            log.info(
                "stopping {listener}: {count} connection(s) get {drain:g}s to end",
                listener=self.listener.name,
                count=count,
                drain=self.shutdown_drain,
            )
        drained = drain(
            tls_factory, self.reactor, self.shutdown_drain, "shutdown", "the gateway is stopping"
        )
        return defer.gatherResults([stopped, drained])

    def startService(self) -> None:
        # Logged once every port is bound (privilegedStartService): a start that fails on
        # another listener's port does not claim this one listens.
        super().startService()
        for warning in self.material.warnings:
            log.warn("{warning}", warning=warning)
        self._log_listening()

    def _log_listening(self) -> None:
        if self._logged:
            return
        self._logged = True
        host, port = self.listener.bind
        up_host, up_port = self.listener.upstream.address
        log.info(
            "listener {listener} on {host}:{port} -> upstream {up_host}:{up_port} "
            "(verify={verify}, tls={tls})",
            listener=self.listener.name,
            host=host,
            port=port,
            up_host=up_host,
            up_port=up_port,
            verify="verify_peer" if self.listener.tls.verify_peer else "verify_none",
            tls=",".join(self.listener.tls.versions),
        )


def make_gateway_service(prepared: Prepared, reactor: Any) -> GatewayService:
    """The whole gateway in one process: one ListenerService per listener, the monitor, and
    the admin listener if configured. (With ``workers``, ``gateway.workers.master``.)"""
    return build_gateway(GatewayService(prepared, reactor), prepared)


def build_gateway(top: GatewayService, prepared: Prepared) -> GatewayService:
    """Fill ``top`` with its listeners (``new_listener``), monitor and admin port."""
    config = prepared.config
    for listener in config.listeners:
        top.add_listener(
            top.new_listener(listener, prepared.materials[listener.name], config.globals)
        )
    top.monitor.setServiceParent(top)
    top.set_admin(top.admin_port(prepared))
    return top
