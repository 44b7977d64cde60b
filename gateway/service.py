"""The top of the service tree and its lifecycle: ``GatewayService`` (the listeners, the
monitor, the admin listener, the file watcher, the takeover; status, refresh, reload, drain).
Listeners (``gateway.listener``), their parts (``gateway.build``), roles (``gateway.roles``),
the reload plan, ports, drains, signals, the watcher and the takeover have modules of their
own."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import sdnotify, signals, timers
from gateway.build import build_parts
from gateway.config.model import GlobalSettings
from gateway.config.values import format_bind
from gateway.drain import drain_shares, drain_summary
from gateway.errors import GatewayError, describe_error
from gateway.handover import HandoverService
from gateway.history import INTERVAL as HISTORY_INTERVAL
from gateway.history import History
from gateway.listener import ListenerService
from gateway.monitor import Monitor
from gateway.observe import gateway_version, log_expiring, refresh_now
from gateway.offload import off_reactor
from gateway.ports import ADMIN, ListenError, PortService
from gateway.prepare import Prepared, prepare
from gateway.process import GatewayState, ProcessRole
from gateway.reload_plan import ReloadPlan, plan_reload
from gateway.roles import listen_endpoint
from gateway.status import GatewayStatus, ReloadStatus
from gateway.twisted_native import quick_text_log
from gateway.watch import IN_PROGRESS, FileWatcher

log = Logger()

EXPIRY_CHECK_INTERVAL = 86400.0  # the certificates' expiry is logged at start and daily


class GatewayService(service.MultiService):
    """The top of the tree: the listeners, the monitor, the admin listener; status, refresh
    and reload for the whole gateway. A listener that cannot bind stops the start before
    anything else starts, as a ConfigError at the line that declared it. SIGTERM stops
    cleanly (exit 0); SIGHUP, ``POST /reload`` and a settled change of a watched file reload.
    """

    def __init__(
        self,
        prepared: Prepared,
        reactor: Any,
        role: ProcessRole,
        state: GatewayState | None = None,
    ) -> None:
        """``state``: where the configuration in force and the listeners are kept (a
        master's worker pool reads the same one)."""
        super().__init__()
        self.state = state if state is not None else GatewayState(prepared)
        self.state.prepared = prepared
        self.config = prepared.config
        self.reactor = reactor
        self.role = role
        self.started = reactor.seconds()
        self.listeners = self.state.listeners
        self.reloads = ReloadStatus()
        self.draining: float | None = None  # since when (SIGTERM, POST /drain)
        self._reloading: defer.Deferred[dict[str, Any]] | None = None
        workers = role.workers
        self.monitor = Monitor(
            reactor,
            self.config.globals.stats_log_interval,
            (lambda: [ls.status() for ls in self.listeners.values()]) if role.stats_line else tuple,
            workers.status if workers is not None else tuple,
        )
        self.admin: PortService | None = None
        self.admin_resource: Any = None
        self._ready_poll = timers.every(0.2, self._notify_when_ready, reactor, "readiness")
        # Long walks (the live-session sweep after a CRL update) share one cooperator on this
        # reactor, in slices, so that a large listener never stalls the loop.
        self.cooperator = role.cooperator or timers.paced_cooperator(reactor)
        for listener in self.config.listeners:
            self.add_listener(self.new_listener(prepared, listener.name))
        self.monitor.setServiceParent(self)
        self.history = History()
        if role.stats_line:  # the process operators read (one process, or the master)
            for every, call, what in (
                (HISTORY_INTERVAL, self._record, "the history"),
                (EXPIRY_CHECK_INTERVAL, self.check_certificates, "the expiry check"),
            ):
                timers.every(every, call, reactor, what).setServiceParent(self)
        self.set_admin(self.admin_port(prepared))
        self.files: FileWatcher | None = None  # watch_files, in the process that reloads
        if role.signals:  # the process that reloads, drains and may be taken over
            self._watch_and_hand_over(self.config.globals)
        if workers is not None:
            workers.setServiceParent(self)

    def _watch_and_hand_over(self, g: GlobalSettings) -> None:
        """watch_files, and takeover_socket (``gateway.handover``)."""
        if g.watch_files:
            self.files = FileWatcher(self, self.reactor, g.watch_files_interval)
            self.files.setServiceParent(self)
        if g.takeover_socket is not None:
            handover = HandoverService(self, self.reactor, g.takeover_socket, self.role.told)
            handover.setServiceParent(self)

    @property
    def prepared(self) -> Prepared:
        return self.state.prepared

    def new_listener(self, prepared: Prepared, name: str) -> ListenerService:
        config = prepared.config
        return ListenerService(
            lambda events: build_parts(
                config.listener(name),
                prepared.materials[name],
                config.globals,
                self.role.listeners,
                self.reactor,
                events,
            ),
            self.role.listeners,
            self.reactor,
            self.cooperator,
        )

    def add_listener(self, listener_service: ListenerService) -> None:
        self.listeners[listener_service.parts.name] = listener_service
        listener_service.setServiceParent(self)

    def admin_port(self, prepared: Prepared) -> PortService | None:
        """The admin listener's port service for ``prepared`` (not yet bound), or None."""
        settings = prepared.config.globals
        if settings.admin_listen is None or not self.role.admin:
            return None
        from gateway.admin.web import admin_site

        site = admin_site(self, prepared.admin_token, settings.admin_open_read, self.reactor)
        endpoint = listen_endpoint(self.reactor, self.role.inherited, settings.admin_listen)
        port = PortService(endpoint, settings.admin_listen, site, None, self.reactor, 0.0, ADMIN)
        port.setName("admin")
        return port

    def set_admin(self, admin: PortService | None) -> None:
        old, self.admin = self.admin, admin
        self.admin_resource = admin.factory.resource if admin is not None else None
        if old is not None:
            old.disownServiceParent()  # stops listening
        if admin is not None:
            admin.setServiceParent(self)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
            self.role.inherited.close_rest()  # (sockets no listener took)
        except ListenError as e:
            if e.listener == ADMIN:
                raise self.config.global_error("admin.listen", e.detail) from None
            raise self.config.error(e.listener, "", e.detail) from None

    def startService(self) -> None:
        quick_text_log()  # (twistd's log file observers exist by now)
        self.cooperator.start()
        super().startService()
        if self.role.signals:
            self.reactor.callWhenRunning(signals.install, self.reactor, self.reload)  # first
        for warning in self.prepared.warnings:
            log.warn("{warning}", warning=warning)
        # Polled from when the reactor runs: by then SIGHUP is handled (systemd may send it
        # as soon as it has READY=1; before the handler, the signal would end the process).
        if self.role.signals:
            self.reactor.callWhenRunning(self._ready_poll.setServiceParent, self)

    def _notify_when_ready(self) -> None:
        """systemd (Type=notify) learns READY=1 once every listener accepts."""
        try:
            ok = self.status().accepting
        except Exception:
            log.failure("readiness check failed")
            return
        if ok and self._ready_poll.parent is not None:
            # Stopped on the next turn: a TimerService cannot stop inside its first call.
            self.reactor.callLater(0, self._ready_poll.disownServiceParent)
            if sdnotify.notify("READY=1"):
                log.info("told systemd: ready")

    def stopService(self) -> defer.Deferred[Any]:
        """Not ready at once; the ports accept for drain_ready_delay more, then drain."""
        sdnotify.notify("STOPPING=1")
        self.draining = self.reactor.seconds()
        delay = self.config.globals.drain_ready_delay if self.role.signals else 0.0  # (worker: 0)
        log.info("draining: not ready; the ports accept for {delay:g}s more", delay=delay)
        return task.deferLater(self.reactor, delay, self._stop_now)

    def _stop_now(self) -> defer.Deferred[Any]:
        share = drain_shares(self.config.globals.drain_rate, self.listeners, self.role.workers)
        for name, listener in self.listeners.items():
            listener.drain_rate = share[name]
        runs = []
        workers = self.role.workers
        if workers is not None:
            # The workers drain and stop while this process's own services stop (its copies
            # of the sockets close: the workers hold theirs until they stop).
            runs.append(workers.stop(self.config.globals.shutdown_drain))
        runs.append(defer.maybeDeferred(super().stopService))
        return defer.gatherResults(runs, consumeErrors=True).addBoth(self._stop_cooperator)

    def _stop_cooperator(self, result: object) -> object:
        self.cooperator.stop()
        return result

    # -- what the admin listener and the CLI read ---------------------------------------------

    def status(self) -> GatewayStatus:
        workers = self.role.workers
        return GatewayStatus(
            version=gateway_version(),
            config_path=self.config.path,
            started=self.started,
            now=self.reactor.seconds(),
            listeners=tuple(ls.status() for ls in self.listeners.values()),
            reactor_max_lag=self.monitor.max_lag_ever,
            reactor_lag=self.monitor.lag.snapshot(),
            reload=self.reloads,
            workers=workers.status() if workers is not None else (),
            history=self.history.snapshot(),
            files=self.files.status() if self.files is not None else None,
            draining=self.draining,
        )

    def check_certificates(self) -> None:
        """At start and once a day: a line for each certificate of the gateway's own that
        expires soon (``observe.log_expiring``)."""
        log_expiring(self.status().listeners, self.reactor.seconds())

    def _record(self) -> None:
        self.history.record(self.status())

    def alive(self) -> tuple[bool, str]:
        return self.monitor.alive()

    def drain(self, origin: str) -> dict[str, Any]:
        """Stop as on SIGTERM (readiness false, drain_ready_delay, the paced drain, exit 0);
        what it will do, for the one who asked."""
        log.info("drain asked ({origin}): stopping as on SIGTERM", origin=origin)
        if self.draining is None:
            self.reactor.callLater(0, self.reactor.stop)
        return drain_summary(self.config.globals, self.status())

    def refresh(self, listener: str | None) -> defer.Deferred[dict[str, Any]]:
        """Fetch CRLs and OCSP now (one listener or all); fires with what happened."""
        targets = [ls.parts for name, ls in self.listeners.items() if listener in (None, name)]
        log.info("refresh asked for {which}", which=listener or "every listener")
        return refresh_now(targets, self.role.listeners.fetches)

    # -- reload -----------------------------------------------------------------------------

    def reload(self, origin: str) -> defer.Deferred[dict[str, Any]]:
        """Re-read the configuration file and every file it names (in a thread), and apply
        it; an invalid one is refused and the running one stays in force. Fires with
        {"ok", "changes"} or {"ok": False, "error"}; one reload at a time."""
        if self._reloading is not None:
            return defer.succeed({"ok": False, "error": IN_PROGRESS})
        sdnotify.notify("RELOADING=1")
        log.info("reload ({origin}): reading {path}", origin=origin, path=self.config.path)
        read: defer.Deferred[Prepared] = off_reactor(self.reactor, prepare, self.config.path)
        d: defer.Deferred[dict[str, Any]] = read.addCallback(self.apply)
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
        text = str(error) if isinstance(error, GatewayError) else describe_error(reason.value)
        log.error("reload refused: {error}; the running configuration stays in force", error=text)
        r = self.reloads
        self.reloads = ReloadStatus(
            r.count, r.failures + 1, self.reactor.seconds(), "failed", text, ()
        )
        return {"ok": False, "error": text}

    def apply(self, prepared: Prepared) -> defer.Deferred[dict[str, Any]]:
        """Apply a prepared configuration (a reload's, or a worker's from its master)."""
        config, old = prepared.config, self.config
        if config.globals.workers != old.globals.workers and self.role.workers is not None:
            log.warn("reload: a new value of workers takes effect at the next restart")
        plan = plan_reload(old, self.prepared.materials, config, prepared.materials)
        # 1. Everything that can fail is done first: binding new addresses. If one cannot
        #    be bound, the ports bound so far are closed and the reload is refused.
        added = [self.new_listener(prepared, name) for name in plan.added]
        moved = {
            c.name: self.role.listeners.port(self.listeners[c.name].handle, config.listener(c.name))
            for c in plan.changed
            if c.moved
        }
        new_admin = self.admin_port(prepared) if plan.admin_moved else None
        ports = [ls.port for ls in added] + list(moved.values())
        ports += [new_admin] if new_admin is not None else []
        binds: defer.Deferred[Any] = defer.gatherResults(
            [p.bind() for p in ports], consumeErrors=True
        )

        def refused(failure: Failure) -> Failure:
            for port in ports:
                if port.port is not None:
                    port.port.stopListening()
            first = failure.value
            error = first.subFailure.value if isinstance(first, defer.FirstError) else first
            if isinstance(error, ListenError):
                if error.listener == ADMIN:
                    raise config.global_error("admin.listen", error.detail) from None
                raise config.error(error.listener, "", error.detail) from None
            return failure

        binds.addErrback(refused)
        binds.addCallback(lambda _: self._carry_out(prepared, plan, added, moved, new_admin))
        return binds

    def _carry_out(
        self,
        prepared: Prepared,
        plan: ReloadPlan,
        added: list[ListenerService],
        moved: dict[str, Any],
        new_admin: PortService | None,
    ) -> defer.Deferred[dict[str, Any]]:
        """2. Apply the plan: removed listeners drain, kept ones reconfigure, new ones start."""
        config, old = prepared.config, self.config
        changes = plan.words(config.globals.reload_drain)
        for name in plan.removed:
            self.listeners.pop(name).retire(config.globals.reload_drain)
        waits = []
        for change in plan.changed:
            current = self.listeners[change.name]
            new = build_parts(
                config.listener(change.name),
                prepared.materials[change.name],
                config.globals,
                self.role.listeners,
                self.reactor,
                current.events,
                current.parts,
                change,
            )
            waits.append(current.reconfigure(new, change, moved.get(change.name)))
        for ls in added:
            changes.append(
                f"listener {ls.parts.name} added on {format_bind(ls.parts.settings.bind)}"
            )
            self.add_listener(ls)
        changes += plan.globals
        if old.globals.stats_log_interval != config.globals.stats_log_interval:
            self.monitor.set_interval(config.globals.stats_log_interval)
        if plan.admin_moved:
            self.set_admin(new_admin)
            where = config.globals.admin_listen
            changes.append(f"admin listener {'on ' + format_bind(where) if where else 'off'}")
        elif self.admin_resource is not None:
            self.admin_resource.token = prepared.admin_token
            self.admin_resource.open_read = config.globals.admin_open_read
            if plan.admin_token:
                changes.append("admin token")
        self.state.prepared, self.config = prepared, config
        for warning in prepared.all_warnings():
            log.warn("{warning}", warning=warning)

        def applied(_: object) -> dict[str, Any]:
            if not self.role.logs_reloads:
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

        done = defer.gatherResults(waits)
        workers = self.role.workers
        if workers is not None:
            done.addCallback(lambda _: workers.configure_all(prepared))
        return done.addCallback(applied)


__all__ = ["GatewayService"]
