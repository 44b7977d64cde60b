"""Certificates rotated on disk are served without a signal (``watch_files``).

The files the listeners' TLS is built from (``certfile``, ``keyfile``, ``cacertfile``,
``ocsp_issuer_pem``, ``acl_file``, ``deny_file``, the upstream TLS files) are looked at every
``watch_files_interval``, and at once (after a short settle) when inotify reports an event in
their directories. A look is one ``stat`` of each (following symlinks, so that a Kubernetes
secret's ``..data`` swap and an ``mv`` over the old file are seen as well as a write in
place), off the reactor thread. A change is acted on once two looks in a row agree (a file
still being written is not read half-way); the gateway then reloads as on SIGHUP: every
file read again and checked, only what changed rebuilt, live sessions untouched. A new file
that does not parse, or a key that does not match its certificate, is refused like any
reload: the running material stays, the refusal is logged and counted, and the next change
is tried again.

``FileLooks`` is the decision, sans-IO; ``FileWatcher`` the Twisted service around it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Protocol

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import filepath

from gateway import timers
from gateway.config.model import Config
from gateway.offload import off_reactor
from gateway.status import FilesStatus

log = Logger()

# (device, inode, size, modification time in ns) of the file a path names now; None: missing.
Stamp = tuple[int, int, int, int] | None

SETTLE = 1.0  # seconds after an inotify event before the first look
IN_PROGRESS = "a reload is already in progress"  # GatewayService.reload's answer then


def watched_files(config: Config) -> tuple[str, ...]:
    """Every file a reload reads again for the listeners' TLS and rules, once each."""
    paths: list[str | None] = []
    for listener in config.listeners:
        tls = listener.tls
        paths += [tls.certfile, tls.keyfile, tls.cacertfile, listener.acl.file]
        paths.append(listener.identity.deny_file)
        for tenant in listener.tenants:
            paths += [tenant.certfile, tenant.keyfile, tenant.cacertfile, tenant.match_ca]
            paths.append(tenant.acl_file)
        if listener.ocsp is not None:
            paths.append(listener.ocsp.issuer_pem)
        upstream = listener.upstream.tls
        if upstream is not None:
            paths += [upstream.cacertfile, upstream.certfile, upstream.keyfile]
    return tuple(dict.fromkeys(p for p in paths if p is not None))


def stamps(paths: tuple[str, ...]) -> dict[str, Stamp]:
    """Each path's stamp now (blocking: call it off the reactor thread)."""
    out: dict[str, Stamp] = {}
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out[path] = None
        else:
            out[path] = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    return out


@attrs.define
class FileLooks:
    """What the looks at the files decide (sans-IO). ``applied``: the stamps the running
    material was read with (or that the last reload tried)."""

    applied: Mapping[str, Stamp]
    pending: Mapping[str, Stamp] | None = None  # a change seen once, not yet settled

    def look(self, now: Mapping[str, Stamp]) -> list[str]:
        """The paths that changed, once two looks in a row agree on them; else []."""
        if dict(now) == dict(self.applied):
            self.pending = None
            return []
        if self.pending is None or dict(now) != dict(self.pending):
            self.pending = now  # seen once: wait for the next look
            return []
        changed = [p for p in now if now[p] != self.applied.get(p)]
        changed += [p for p in self.applied if p not in now]
        self.applied, self.pending = now, None
        return changed


class Reloads(Protocol):
    """What the watcher asks of the gateway (``GatewayService``)."""

    @property
    def config(self) -> Config: ...

    def reload(self, origin: str) -> defer.Deferred[dict[str, Any]]: ...


class FileWatcher(service.Service):
    """Looks at the files of ``gateway.config`` (the configuration in force) every
    ``interval`` seconds (and soon after an inotify event in their directories); a settled
    change calls ``gateway.reload(origin)``, which fires with {"ok": ...}."""

    name = "file-watcher"

    def __init__(self, gateway: Reloads, reactor: Any, interval: float) -> None:
        self.paths = lambda: watched_files(gateway.config)
        self.reload = gateway.reload
        self.reactor = reactor
        self.interval = interval
        self.counts = FilesStatus()
        self.looks: FileLooks | None = None
        self._watched: tuple[str, ...] = ()
        self._loop = timers.looping(self._look, reactor, "looking at the watched files")
        self._soon: Any = None  # the look an inotify event asked for
        self._notify: Any = None  # twisted.internet.inotify.INotify, where there is one
        self._looking: defer.Deferred[Any] | None = None

    def startService(self) -> None:
        super().startService()
        self.rebase()
        timers.start(self._loop, self.interval, "the file watcher")
        self._start_inotify()

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        if self._notify is not None:
            self._notify.loseConnection()
            self._notify = None

    def rebase(self) -> defer.Deferred[None]:
        """Take the files as they are now as the running ones (at start, after a reload
        that changed the configuration: the paths may be others)."""
        paths = self.paths()
        self._watched = paths

        def taken(now: dict[str, Stamp]) -> None:
            self.looks = FileLooks(now)
            if self._notify is not None:
                self._watch_directories()

        return off_reactor(self.reactor, stamps, paths).addCallback(taken)

    def _look(self) -> defer.Deferred[Any] | None:
        if self._looking is not None or self.looks is None:
            return None  # a look (or a reload it started) is still running
        paths = self._watched
        d = off_reactor(self.reactor, stamps, paths).addCallback(self._looked)
        self._looking = d

        def done(result: object) -> object:
            self._looking = None
            return result

        return d.addBoth(done)

    def _looked(self, now: dict[str, Stamp]) -> defer.Deferred[Any] | None:
        assert self.looks is not None
        before = self.looks.applied
        changed = self.looks.look(now)
        if not changed:
            if self.looks.pending is not None:  # settle: look again soon, not an interval on
                self._look_soon(SETTLE)
            return None
        self.counts = attrs.evolve(self.counts, changes=self.counts.changes + 1)
        log.info(
            "files changed on disk: {files}; reloading",
            files=", ".join(changed),
        )
        return self.reload("files changed").addCallback(self._reloaded, before)

    def _reloaded(self, result: dict[str, Any], before: Mapping[str, Stamp]) -> None:
        c = self.counts
        if result.get("error") == IN_PROGRESS:  # another reload read the files: try again
            assert self.looks is not None
            self.looks.applied = before
            self._look_soon(SETTLE)
            return
        if result.get("ok"):
            self.counts = attrs.evolve(c, applied=c.applied + 1)
            if self.paths() != self._watched:
                self.rebase()
        else:  # the reload logged why; the next change tries again
            self.counts = attrs.evolve(c, refused=c.refused + 1)

    def status(self) -> FilesStatus:
        return attrs.evolve(self.counts, watched=len(self._watched))

    def _look_soon(self, delay: float) -> None:
        if self._soon is not None and self._soon.active():
            self._soon.reset(delay)
            return
        self._soon = self.reactor.callLater(delay, timers.guarded(self._look, "a file look"))

    # -- inotify, where the platform has it: a change is seen at once ---------------------

    def _start_inotify(self) -> None:
        try:
            from twisted.internet import inotify

            self._notify = inotify.INotify(self.reactor)
            self._notify.startReading()
        except Exception as e:  # not Linux, or no inotify instance left: polling only
            log.info(
                "file watcher: no inotify ({why}); polling every {s:g}s", why=e, s=self.interval
            )
            self._notify = None
            return
        self._watch_directories()

    def _watch_directories(self) -> None:
        from twisted.internet import inotify

        mask = (
            inotify.IN_CLOSE_WRITE
            | inotify.IN_MOVED_TO
            | inotify.IN_CREATE
            | inotify.IN_DELETE
            | inotify.IN_ATTRIB
        )
        for directory in sorted({os.path.dirname(p) or "." for p in self._watched}):
            try:
                self._notify.watch(filepath.FilePath(directory), mask, callbacks=[self._event])
            except Exception as e:  # gone, or no watch left: the polling still sees it
                log.warn("file watcher: cannot watch {dir}: {why}", dir=directory, why=e)

    def _event(self, _watch: object, _path: object, _mask: int) -> None:
        self._look_soon(SETTLE)
