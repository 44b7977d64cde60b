"""CRL state for one listener: the cache the handshake reads, and the service refreshing it.

``CrlCache`` is what the TLS verify callback reads (synchronously, no I/O). ``CrlService``
owns the sources (configured URLs and, optionally, distribution points found in client
certificates), fetches them with treq on the shared refresh scheduler, has the CRL worker
process parse and verify them, installs what is newer, and keeps ``CrlSourceState`` per
source for operators.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.choices import FailurePolicy
from gateway.clock import CLOCK_SKEW, format_timestamp
from gateway.config.model import CrlSettings
from gateway.errors import GatewayError, describe_error
from gateway.offload import off_reactor
from gateway.revocation.crl import CrlError, CrlInfo, LoadedCrl, decode_answer, loaded_blobs
from gateway.revocation.crl_cache import CrlCache as CrlCache
from gateway.revocation.fetch import Body, HttpFetcher
from gateway.revocation.process import encode_request
from gateway.revocation.refresh import Outcome, RefreshJob, RefreshScheduler
from gateway.revocation.store import crl_path, read_index
from gateway.status import CrlSourceStatus, CrlStatus

log = Logger()

# The worker's answer (an index of fixed-width serials) is smaller than the CRL it came
# from; bound it at twice the body so a broken worker cannot flood the reactor.
_OUTPUT_PER_BODY_BYTE = 2
_MIN_OUTPUT_LIMIT = 4096  # room for the answer's JSON line with a tiny CRL


# A CRL restored from the index kept in crl_cache.dir serves at once; this long after the
# start (past the reconnect storm), the CRL worker parses the kept body again and the index
# must match what it finds.
INDEX_VERIFY_DELAY = 60.0


def _same_indexes(a: list[LoadedCrl], b: list[LoadedCrl]) -> bool:
    """Whether two loads of a body hold the same CRLs with the same entries."""
    if len(a) != len(b) or any(x.info != y.info for x, y in zip(a, b, strict=True)):
        return False
    for x, y in zip(a, b, strict=True):
        blobs_x, blobs_y = loaded_blobs(x), loaded_blobs(y)
        if len(blobs_x) != len(blobs_y):
            return False
        if any(bx != by for bx, by in zip(blobs_x, blobs_y, strict=True)):
            return False
    return True


# Results of a fetch that installed nothing because what came was worse than what is held.
_KEPT_OUT = {
    "older": "older than the CRL held, kept the held one",
    "expired": "already past its nextUpdate while the CRL held is not, kept the held one",
}


@attrs.define
class CrlSourceState:
    """What an operator wants to know about one CRL source (beyond its schedule)."""

    url: str
    discovered: bool = False
    last_fetch: float | None = None
    last_result: str | None = None  # updated, unchanged, older, loaded_from_disk, error
    last_error: str | None = None
    size: int | None = None
    crls: tuple[CrlInfo, ...] = ()  # one per issuer in the body
    last_success: float | None = None  # a fetch that gave a valid CRL (new or unchanged)
    last_failure: float | None = None
    failure_kinds: dict[str, int] = attrs.Factory(dict)  # since start, by error kind


@attrs.define(eq=False)
class _Source:
    state: CrlSourceState
    job: RefreshJob
    restored: bool = False  # the persisted copy was tried (first run only)
    from_index: list[LoadedCrl] | None = None  # restored from the kept index, not verified
    # Fires once the source can decide devices: its persisted copy is in force (the
    # fetch that follows may replace it), or its first fetch is over (whatever came).
    usable: defer.Deferred[None] = attrs.Factory(defer.Deferred)

    def mark_usable(self) -> None:
        if not self.usable.called:
            self.usable.callback(None)

    def status(self) -> CrlSourceStatus:
        s = self.state
        return CrlSourceStatus(
            url=s.url,
            discovered=s.discovered,
            last_fetch=s.last_fetch,
            last_result=s.last_result,
            last_error=s.last_error,
            failures=self.job.failures,
            next_refresh=self.job.next_refresh,
            size=s.size,
            last_success=s.last_success,
            last_failure=s.last_failure,
            failure_kinds=dict(s.failure_kinds),
            crls=tuple(
                CrlStatus(c.issuer_text, c.number, c.this_update, c.next_update, c.count)
                for c in s.crls
            ),
        )


class CrlService(service.Service):
    """Fetches, validates and refreshes one listener's CRLs. Never raises out of a timer."""

    def __init__(
        self,
        listener: str,
        settings: CrlSettings,
        refresh_interval: float,
        cache_dir: str | None,
        reactor: IReactorTime,
        fetcher: HttpFetcher,
        processor: Any,
        cache: CrlCache,
        trust_pem: bytes,
        on_update: Callable[[list[LoadedCrl]], Any] = lambda crls: None,
    ) -> None:
        self.listener = listener
        self.settings = settings
        self.name = f"crl:{listener}"
        self._interval = refresh_interval
        self._cache_dir = cache_dir
        self._reactor = reactor
        self._fetcher = fetcher
        self._processor = processor
        self.cache = cache
        self._trust_pem = trust_pem
        self.on_update = on_update  # e.g. the listener's sweep of live sessions
        self.scheduler = RefreshScheduler(reactor, on_tick=self._log_expiry)
        self.sources: dict[str, _Source] = {}
        self._discovered: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.ready: defer.Deferred[None] = defer.Deferred()
        self._expired_logged: set[tuple[bytes, str]] = set()
        self._verifications: list[Any] = []  # delayed checks of restored indexes
        for url in settings.urls:
            self._add_source(url, discovered=False)

    def _add_source(self, url: str, discovered: bool) -> _Source:
        job = RefreshJob(url, lambda: self._refresh(source), self._interval)
        source = _Source(CrlSourceState(url, discovered=discovered), job)
        self.scheduler.add(job)
        self.sources[url] = source
        return source

    # -- lifecycle ----------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._restore_discovered()
        configured = [s for s in self.sources.values() if not s.state.discovered]
        for s in list(self.sources.values()):
            self.scheduler.run_now(s.job)
        # Ready once every configured source can decide: from its persisted copy at once
        # (a restart serves what crl_cache.dir kept while the fetch runs), else after its
        # first fetch.
        defer.DeferredList([s.usable for s in configured]).addCallback(lambda _: self._ready())
        self.scheduler.start()

    def stopService(self) -> None:
        super().stopService()
        self.scheduler.stop()
        for call in self._verifications:
            if call.active():
                call.cancel()

    def _ready(self) -> None:
        if not self.ready.called:
            log.info(
                "crl {listener}: ready, {held} CRL(s) held from {sources} source(s)",
                listener=self.listener,
                held=len(self.cache.infos()),
                sources=len(self.sources),
            )
            self.ready.callback(None)

    def status(self) -> tuple[CrlSourceStatus, ...]:
        return tuple(s.status() for s in self.sources.values())

    def refresh_now(self) -> defer.Deferred[tuple[CrlSourceStatus, ...]]:
        """Fetch every source now (joining runs in flight); fires with their status once
        all are over (each run is bounded by crl_cache_http_timeout and the worker)."""
        runs = [self.scheduler.run_now(s.job) for s in list(self.sources.values())]
        done = defer.DeferredList(runs, consumeErrors=True)
        return done.addCallback(lambda _: self.status())

    def _log_expiry(self) -> None:
        expired = {(info.issuer, info.scope.key()): info for info in self.cache.expired_crls()}
        for key, info in expired.items():
            if key not in self._expired_logged:
                self._expired_logged.add(key)
                reject = self.settings.expired_policy == FailurePolicy.REJECT
                log.critical(
                    "crl {listener}: CRL of {issuer} expired at {next_update} and no newer one "
                    "could be fetched; crl_expired_policy = {policy}: clients it covers are "
                    "{effect}",
                    listener=self.listener,
                    issuer=info.issuer_text,
                    next_update=format_timestamp(info.next_update),
                    policy=self.settings.expired_policy,
                    effect="REFUSED" if reject else "ACCEPTED UNCHECKED",
                )
        self._expired_logged &= set(expired)

    # -- one refresh ------------------------------------------------------------------------

    def _refresh(self, source: _Source) -> defer.Deferred[None]:
        """One run of a source's job: (the first time) its persisted copy, then a fetch."""
        d: defer.Deferred[None] = defer.succeed(None)
        path = self._persist_path(source.state.url)
        if not source.restored:
            source.restored = True
            if path and os.path.exists(path):
                d = self._restore(source, path)

        def usable_if_held(_: object) -> None:
            if source.state.crls:
                source.mark_usable()

        def usable_anyway(result: Any) -> Any:
            source.mark_usable()
            return result

        d.addCallback(usable_if_held)
        d.addCallback(lambda _: self._fetch(source, path))
        return d.addBoth(usable_anyway)

    def _restore(self, source: _Source, path: str) -> defer.Deferred[None]:
        """At start: the persisted CRL's index if its record vouches for it (memory-mapped,
        nothing parsed: ready at once, verified later), else the body through the worker."""
        d = off_reactor(self._reactor, read_index, path, self._trust_pem)

        def opened(found: tuple[Any, str]) -> defer.Deferred[None] | None:
            mapping, why = found
            if mapping is not None:
                try:
                    crls = decode_answer(mapping)
                except CrlError as e:
                    why = f"index not readable ({e.detail})"
                else:
                    self._install(source, crls, "loaded_from_disk")
                    source.from_index = crls
                    self._verifications.append(
                        self._reactor.callLater(
                            INDEX_VERIFY_DELAY, self._verify_index, source, path, crls
                        )
                    )
                    return None
            log.info(
                "crl {listener} {url}: parsing the persisted CRL {path} ({why})",
                listener=self.listener,
                url=source.state.url,
                path=path,
                why=why,
            )
            return self._load_persisted(source, path)

        return d.addCallback(opened)

    def _verify_index(self, source: _Source, path: str, crls: list[LoadedCrl]) -> None:
        """The kept index must be what the kept body holds: if the index still serves, the
        worker parses and validates the body again and its result replaces a mismatch."""
        url = source.state.url
        held = self.cache.loaded_from(url)
        if source.from_index is not crls or {id(c) for c in held} != {id(c) for c in crls}:
            return  # a fetch replaced it: what serves came from the worker already
        header = encode_request(
            self._trust_pem, self._reactor.seconds(), CLOCK_SKEW, None, url, [], body_path=path
        )
        d = self._processor.process(header, [], self.settings.max_size * _OUTPUT_PER_BODY_BYTE)

        def checked(verified: list[LoadedCrl]) -> None:
            if self.cache.loaded_from(url) != held:
                return  # replaced meanwhile
            source.from_index = None
            if _same_indexes(crls, verified):
                log.info(
                    "crl {listener} {url}: kept index verified", listener=self.listener, url=url
                )
                return
            log.critical(
                "crl {listener} {url}: the index kept in {path} does not match the CRL kept "
                "beside it; serving the CRL as parsed now",
                listener=self.listener,
                url=url,
                path=path,
            )
            self.cache.forget_source(url)
            self._install(source, verified, "loaded_from_disk")
            self.on_update(verified)

        def failed(reason: Failure) -> None:
            if self.cache.loaded_from(url) != held:
                return
            source.from_index = None
            log.critical(
                "crl {listener} {url}: the CRL kept in {path} no longer validates ({why}); "
                "dropping what was restored from it",
                listener=self.listener,
                url=url,
                path=path,
                why=describe_error(reason.value),
            )
            self.cache.forget_source(url)
            source.state.crls = ()
            self.on_update([])

        d.addCallbacks(checked, failed)

    def _load_persisted(self, source: _Source, path: str) -> defer.Deferred[None]:
        header = encode_request(
            self._trust_pem,
            self._reactor.seconds(),
            CLOCK_SKEW,
            None,
            source.state.url,
            [],
            body_path=path,
        )
        d = self._processor.process(header, [], self.settings.max_size * _OUTPUT_PER_BODY_BYTE)

        def loaded(crls: list[LoadedCrl]) -> None:
            self._install(source, crls, "loaded_from_disk")

        def failed(reason: Failure) -> None:
            log.warn(
                "crl {listener} {url}: persisted CRL {path} not usable: {why}",
                listener=self.listener,
                url=source.state.url,
                path=path,
                why=describe_error(reason.value),
            )

        return d.addCallbacks(loaded, failed)

    def _fetch(self, source: _Source, persist: str | None) -> defer.Deferred[None]:
        url = source.state.url
        d: defer.Deferred[Any] = self._fetcher.fetch_chunks(
            url, self.settings.http_timeout, self.settings.max_size
        )

        def process(body: Body) -> defer.Deferred[list[LoadedCrl]]:
            held = self.cache.loaded_from(url)
            if held and all(c.info.sha256 == body.sha256 for c in held):
                return defer.succeed(held)  # the same bytes as the CRLs in force
            size = sum(map(len, body))
            header = encode_request(
                self._trust_pem,
                self._reactor.seconds(),
                CLOCK_SKEW,
                persist,
                url,
                self.cache.infos_from(url),
            )
            limit = max(size, _MIN_OUTPUT_LIMIT) * _OUTPUT_PER_BODY_BYTE
            return self._processor.process(header, body, limit)

        d.addCallback(process)
        d.addCallbacks(lambda crls: self._fetched(source, crls), lambda f: self._failed(source, f))
        return d

    def _fetched(self, source: _Source, crls: list[LoadedCrl]) -> None:
        source.state.last_fetch = self._reactor.seconds()
        source.state.last_error = None
        self._install(source, crls, None, schedule=True)

    def _next_update(self, source: _Source) -> float | None:
        """The soonest nextUpdate of the CRLs the source last delivered."""
        updates = [c.next_update for c in source.state.crls if c.next_update is not None]
        return min(updates) if updates else None

    def _install(
        self, source: _Source, crls: list[LoadedCrl], result: str | None, schedule: bool = False
    ) -> None:
        url = source.state.url
        verdicts = [self.cache.install(c, url) for c in crls]
        installed = [c for c, v in zip(crls, verdicts, strict=True) if v == "newer"]
        if result is None:
            result = (
                "updated"
                if installed
                else next((v for v in ("expired", "older") if v in verdicts), "unchanged")
            )
        source.state.last_result = result
        now = self._reactor.seconds()
        if result in _KEPT_OUT:
            source.state.last_failure = now
            kinds = source.state.failure_kinds
            kinds[result] = kinds.get(result, 0) + 1
        else:
            source.state.last_success = now
        source.state.size = crls[0].info.size if crls else None
        source.state.crls = tuple(c.info for c in crls)
        if schedule:
            self.scheduler.schedule(source.job, Outcome(True, self._next_update(source)))
        # One line per change, not per refresh: a refresh that found the same CRL logs
        # nothing (the status page and /metrics show every fetch, its result, the next one).
        if result != "unchanged":
            level = log.warn if result in _KEPT_OUT else log.info
            level(
                "crl {listener} {url}: {result}; {details} next refresh {next_refresh}",
                listener=self.listener,
                url=url,
                result=_KEPT_OUT.get(result, result),
                details="; ".join(
                    f"issuer={c.info.issuer_text} number={c.info.number} "
                    f"thisUpdate={format_timestamp(c.info.this_update)} "
                    f"nextUpdate={format_timestamp(c.info.next_update)} "
                    f"entries={c.info.count} size={c.info.size}"
                    for c in crls
                ),
                next_refresh=format_timestamp(source.job.next_refresh),
            )
        for c in installed:
            for delta_url in c.info.freshest:  # the base names its deltas (FreshestCRL)
                if delta_url not in self.sources:
                    self._add_discovered(delta_url)
        if installed:
            self.on_update(installed)

    def _failed(self, source: _Source, reason: Failure) -> None:
        error = reason.value
        if not isinstance(error, GatewayError):
            log.failure("crl {url}: unexpected failure", reason, url=source.state.url)
        source.state.last_fetch = self._reactor.seconds()
        source.state.last_result = "error"
        source.state.last_error = describe_error(error)
        source.state.last_failure = source.state.last_fetch
        kind = error.kind if isinstance(error, GatewayError) else "unexpected"
        source.state.failure_kinds[kind] = source.state.failure_kinds.get(kind, 0) + 1
        self.scheduler.schedule(source.job, Outcome(False, self._next_update(source)))
        log.warn(
            "crl {listener} {url}: fetch failed ({error}); keeping the last good CRL "
            "({held}); retry at {retry}",
            listener=self.listener,
            url=source.state.url,
            error=source.state.last_error,
            held="none held" if not source.state.crls else "held",
            retry=format_timestamp(source.job.next_refresh),
        )

    # -- distribution points -------------------------------------------------------------

    def discover(self, url: str) -> None:
        """Called at handshake time: remember a distribution point; fetch it soon (no I/O here)."""
        if url in self.sources:
            if url in self._discovered:
                self._discovered.move_to_end(url)
            return
        self._reactor.callLater(0, self._add_discovered, url)

    def _add_discovered(self, url: str, fetch: bool = True) -> _Source | None:
        if url in self.sources or (fetch and not self.running):
            return self.sources.get(url)
        source = self._add_source(url, discovered=True)
        self._discovered[url] = None
        while len(self._discovered) > self.settings.capacity:
            old, _ = self._discovered.popitem(last=False)
            self.sources.pop(old)
            self.scheduler.remove(old)
            self.cache.forget_source(old)
            log.info(
                "crl {listener}: evicted distribution point {url} (capacity)",
                listener=self.listener,
                url=old,
            )
        log.info("crl {listener}: added distribution point {url}", listener=self.listener, url=url)
        if fetch:
            self.scheduler.run_now(source.job)
        return source

    def when_attempted(self, url: str) -> defer.Deferred[None]:
        """Fires once the source has finished its first fetch (whatever the outcome)."""
        source = self.sources.get(url) or self._add_discovered(url)
        if source is None:
            return defer.succeed(None)
        return self.scheduler.when_attempted(source.job)

    # -- persistence -----------------------------------------------------------------------

    def _persist_path(self, url: str) -> str | None:
        return crl_path(self._cache_dir, self.listener, url)

    def _restore_discovered(self) -> None:
        """Re-add the distribution points persisted by an earlier run (start-up only)."""
        if not self.settings.from_cert or self._cache_dir is None:
            return
        directory = os.path.join(self._cache_dir, self.listener)
        if not os.path.isdir(directory):
            return
        for name in sorted(os.listdir(directory)):
            if not name.endswith(".crl.json"):
                continue
            try:
                with open(os.path.join(directory, name)) as f:
                    url = json.load(f).get("url")
            except (OSError, ValueError):
                continue
            if isinstance(url, str) and url not in self.sources:
                self._add_discovered(url, fetch=False)
