"""CRL state for one listener: the cache the handshake reads, and the service refreshing it.

``CrlCache`` is what the TLS verify callback reads (synchronously, no I/O). ``CrlService``
owns the sources (configured URLs and, optionally, distribution points found in client
certificates), fetches them with treq on the shared refresh scheduler, has the CRL worker
process parse and verify them, installs what is newer, and keeps ``CrlSourceState`` per
source for operators.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.choices import FailurePolicy
from gateway.clock import CLOCK_SKEW, format_timestamp
from gateway.config.model import CrlSettings
from gateway.errors import GatewayError, describe_error
from gateway.reasons import FetchResult
from gateway.revocation.crl import LoadedCrl
from gateway.revocation.crl_cache import CrlCache as CrlCache
from gateway.revocation.crl_kept import (
    OUTPUT_PER_BODY_BYTE,
    KeptCrls,
    kept_distribution_points,
)
from gateway.revocation.crl_sources import CrlSourceState, Source
from gateway.revocation.fetch import Body, HttpFetcher
from gateway.revocation.process import encode_request
from gateway.revocation.refresh import Outcome, RefreshJob, RefreshScheduler
from gateway.revocation.store import crl_path
from gateway.status import CrlSourceStatus

log = Logger()

_MIN_OUTPUT_LIMIT = 4096  # room for the answer's JSON line with a tiny CRL


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
        self.sources: dict[str, Source] = {}
        self._discovered: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.ready: defer.Deferred[None] = defer.Deferred()
        self._expired_logged: set[tuple[bytes, str]] = set()
        self._kept = KeptCrls(
            listener,
            reactor,
            processor,
            trust_pem,
            settings.max_size * OUTPUT_PER_BODY_BYTE,
            cache,
            self._install,
            lambda crls: self.on_update(crls),
        )
        for url in settings.urls:
            self._add_source(url, discovered=False)

    def _add_source(self, url: str, discovered: bool) -> Source:
        job = RefreshJob(url, lambda: self._refresh(source), self._interval)
        source = Source(CrlSourceState(url, discovered=discovered), job)
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
        self._kept.stop()

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

    def _refresh(self, source: Source) -> defer.Deferred[None]:
        """One run of a source's job: (the first time) its persisted copy, then a fetch."""
        d: defer.Deferred[None] = defer.succeed(None)
        path = self._persist_path(source.state.url)
        if not source.restored:
            source.restored = True
            if path and os.path.exists(path):
                d = self._kept.restore(source, path)

        def usable_if_held(_: object) -> None:
            if source.state.crls:
                source.mark_usable()

        def usable_anyway(result: Any) -> Any:
            source.mark_usable()
            return result

        d.addCallback(usable_if_held)
        d.addCallback(lambda _: self._fetch(source, path))
        return d.addBoth(usable_anyway)

    def _fetch(self, source: Source, persist: str | None) -> defer.Deferred[None]:
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
            limit = max(size, _MIN_OUTPUT_LIMIT) * OUTPUT_PER_BODY_BYTE
            return self._processor.process(header, body, limit)

        d.addCallback(process)
        d.addCallbacks(lambda crls: self._fetched(source, crls), lambda f: self._failed(source, f))
        return d

    def _fetched(self, source: Source, crls: list[LoadedCrl]) -> None:
        source.state.last_fetch = self._reactor.seconds()
        source.state.last_error = None
        self._install(source, crls, None, schedule=True)

    def _next_update(self, source: Source) -> float | None:
        """The soonest nextUpdate of the CRLs the source last delivered."""
        updates = [c.next_update for c in source.state.crls if c.next_update is not None]
        return min(updates) if updates else None

    def _install(
        self,
        source: Source,
        crls: list[LoadedCrl],
        result: FetchResult | None,
        schedule: bool = False,
    ) -> None:
        url = source.state.url
        verdicts = [self.cache.install(c, url) for c in crls]
        installed = [c for c, v in zip(crls, verdicts, strict=True) if v == "newer"]
        if result is None:
            result = (
                FetchResult.UPDATED
                if installed
                else next(
                    (FetchResult(v) for v in ("expired", "older") if v in verdicts),
                    FetchResult.UNCHANGED,
                )
            )
        source.state.last_result = result
        now = self._reactor.seconds()
        if result.kept_out is not None:
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
        if result is not FetchResult.UNCHANGED:
            level = log.warn if result.kept_out is not None else log.info
            level(
                "crl {listener} {url}: {result}; {details} next refresh {next_refresh}",
                listener=self.listener,
                url=url,
                result=result.kept_out or result,
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

    def _failed(self, source: Source, reason: Failure) -> None:
        error = reason.value
        if not isinstance(error, GatewayError):
            log.failure("crl {url}: unexpected failure", reason, url=source.state.url)
        source.state.last_fetch = self._reactor.seconds()
        source.state.last_result = FetchResult.ERROR
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

    def _add_discovered(self, url: str, fetch: bool = True) -> Source | None:
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
        for url in kept_distribution_points(self._cache_dir, self.listener):
            if url not in self.sources:
                self._add_discovered(url, fetch=False)
