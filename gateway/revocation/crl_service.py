"""CRL state for one listener: the cache the handshake reads, and the service refreshing it.

``CrlCache`` is what the TLS verify callback reads (synchronously, no I/O). ``CrlService``
owns the sources (configured URLs and, optionally, distribution points found in client
certificates), fetches them with treq, has the CRL worker process parse and verify them,
installs what is newer, and keeps ``CrlSourceState`` per source for operators.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.config import ListenerConfig
from gateway.revocation.crl import CLOCK_SKEW, CrlError, CrlInfo, LoadedCrl
from gateway.revocation.fetch import FetchError, HttpFetcher
from gateway.revocation.process import encode_request

log = Logger()

TICK = 1.0  # seconds between checks of what is due
RETRY_BASE = 10.0  # first retry after a failure; doubles up to the refresh interval
_OUTPUT_PER_BODY_BYTE = 2  # the worker's index is smaller than the CRL; bound its answer


def _iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.define
class CrlSourceState:
    """What an operator wants to know about one CRL source."""

    url: str
    discovered: bool = False
    last_fetch: float | None = None
    last_result: str | None = None  # updated, unchanged, older, loaded_from_disk, error
    last_error: str | None = None
    failures: int = 0
    next_refresh: float | None = None
    size: int | None = None
    crls: list[dict[str, Any]] = attrs.Factory(list)  # one per issuer in the body

    def snapshot(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "discovered": self.discovered,
            "last_fetch": _iso(self.last_fetch),
            "last_result": self.last_result,
            "last_error": self.last_error,
            "next_refresh": _iso(self.next_refresh),
            "size": self.size,
            "crls": [
                dict(c, this_update=_iso(c["this_update"]), next_update=_iso(c["next_update"]))
                for c in self.crls
            ],
        }


class CrlCache:
    """issuer (DER Name) -> newest valid CRL. Read at handshake time; written by refreshes."""

    def __init__(self, clock: Any, grace: float) -> None:
        self._clock = clock
        self._grace = grace
        self._by_issuer: dict[bytes, LoadedCrl] = {}
        self._providers: dict[bytes, set[str]] = collections.defaultdict(set)

    def get(self, issuer: bytes) -> LoadedCrl | None:
        return self._by_issuer.get(issuer)

    def current_infos(self) -> dict[bytes, CrlInfo | None]:
        return {k: v.info for k, v in self._by_issuer.items()}

    def install(self, loaded: LoadedCrl, url: str) -> str:
        """Install if newer than what is held. Returns 'newer', 'same' or 'older'."""
        current = self._by_issuer.get(loaded.info.issuer)
        verdict = loaded.info.compare(current.info if current else None)
        self._providers[loaded.info.issuer].add(url)
        if verdict == "newer":
            self._by_issuer[loaded.info.issuer] = loaded
        return verdict

    def forget_source(self, url: str) -> None:
        """A source was evicted: drop the CRLs that no other source provides."""
        for issuer, urls in list(self._providers.items()):
            urls.discard(url)
            if not urls:
                del self._providers[issuer]
                self._by_issuer.pop(issuer, None)

    def status(self, issuer: bytes, serial: int) -> str:
        """'good', 'revoked', 'expired' (past nextUpdate + grace) or 'missing'."""
        entry = self._by_issuer.get(issuer)
        if entry is None:
            return "missing"
        if serial in entry.index:
            return "revoked"
        next_update = entry.info.next_update
        if next_update is not None and self._clock.seconds() > next_update + self._grace:
            return "expired"
        return "good"

    def expired_issuers(self) -> list[CrlInfo]:
        now = self._clock.seconds()
        return [
            e.info
            for e in self._by_issuer.values()
            if e.info.next_update is not None and now > e.info.next_update + self._grace
        ]


@attrs.define(eq=False)
class _Source:
    url: str
    state: CrlSourceState
    due: float = 0.0
    in_flight: defer.Deferred[None] | None = None
    attempted: bool = False
    waiters: list[defer.Deferred[None]] = attrs.Factory(list)


class CrlService(service.Service):
    """Fetches, validates and refreshes one listener's CRLs. Never raises out of a timer."""

    def __init__(
        self,
        listener: ListenerConfig,
        reactor: Any,
        fetcher: HttpFetcher,
        processor: Any,
        cache: CrlCache,
        trust_pem: bytes,
        on_update: Callable[[list[LoadedCrl]], Any] = lambda crls: None,
    ) -> None:
        self.listener = listener
        self.name = f"crl:{listener.name}"
        self._reactor = reactor
        self._fetcher = fetcher
        self._processor = processor
        self.cache = cache
        self._trust_pem = trust_pem
        self.on_update = on_update  # e.g. the listener's sweep of live sessions
        self.sources: dict[str, _Source] = {}
        self._discovered: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._loop: task.LoopingCall | None = None
        self.ready: defer.Deferred[None] = defer.Deferred()
        self._expired_logged: set[bytes] = set()
        for url in listener.crl_cache_urls:
            self.sources[url] = _Source(url, CrlSourceState(url))

    # -- lifecycle ----------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._restore_discovered()
        first = [
            self._first_round(s) for s in list(self.sources.values()) if not s.state.discovered
        ]
        for s in self.sources.values():
            if s.state.discovered:
                self._first_round(s)
        defer.DeferredList(first).addCallback(lambda _: self._ready())
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self._reactor
        self._loop.start(TICK, now=False).addErrback(
            lambda f: log.failure("CRL timer stopped", f)  # not expected: _tick catches all
        )

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for source in self.sources.values():
            if source.in_flight is not None:
                source.in_flight.cancel()

    def _ready(self) -> None:
        if not self.ready.called:
            held = len(self.cache.current_infos())
            log.info(
                "crl {listener}: ready, {held} CRL(s) held from {sources} source(s)",
                listener=self.listener.name,
                held=held,
                sources=len(self.sources),
            )
            self.ready.callback(None)

    def snapshot(self) -> list[dict[str, Any]]:
        return [s.state.snapshot() for s in self.sources.values()]

    # -- scheduling -----------------------------------------------------------------------

    def _tick(self) -> None:
        try:
            now = self._reactor.seconds()
            for source in list(self.sources.values()):
                if source.in_flight is None and source.attempted and source.due <= now:
                    self._refresh(source)
            self._log_expiry()
        except Exception:
            log.failure("CRL refresh tick failed")

    def _log_expiry(self) -> None:
        expired = {info.issuer: info for info in self.cache.expired_issuers()}
        for issuer, info in expired.items():
            if issuer not in self._expired_logged:
                self._expired_logged.add(issuer)
                log.critical(
                    "crl {listener}: CRL of {issuer} expired at {next_update} and no newer one "
                    "could be fetched; crl_expired_policy = {policy}: clients it covers are "
                    "{effect}",
                    listener=self.listener.name,
                    issuer=info.issuer_text,
                    next_update=_iso(info.next_update),
                    policy=self.listener.crl_expired_policy,
                    effect="REFUSED"
                    if self.listener.crl_expired_policy == "reject"
                    else "ACCEPTED UNCHECKED",
                )
        self._expired_logged &= set(expired)

    def _schedule(self, source: _Source, ok: bool) -> None:
        now = self._reactor.seconds()
        interval = self.listener.crl_cache_refresh_interval
        if ok:
            source.state.failures = 0
            delay = interval
            next_updates = [c["next_update"] for c in source.state.crls if c["next_update"]]
            if next_updates:
                until = min(next_updates) - now
                delay = min(interval, until) if until > 0 else min(interval, RETRY_BASE * 6)
        else:
            source.state.failures += 1
            delay = min(interval, RETRY_BASE * 2 ** (source.state.failures - 1))
        source.due = now + max(delay, TICK)
        source.state.next_refresh = source.due

    # -- one refresh ------------------------------------------------------------------------

    def _first_round(self, source: _Source) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.succeed(None)
        path = self._persist_path(source.url)
        if path and os.path.exists(path):
            d = self._load_persisted(source, path)
        d.addCallback(lambda _: self._refresh(source))
        return d

    def _load_persisted(self, source: _Source, path: str) -> defer.Deferred[None]:
        header = encode_request(
            self._trust_pem,
            self._reactor.seconds(),
            CLOCK_SKEW,
            None,
            source.url,
            {},
            body_path=path,
        )
        d = self._processor.process(header, [], self.listener.crl_cache_max_size * 2)

        def loaded(crls: list[LoadedCrl]) -> None:
            self._install(source, crls, "loaded_from_disk")

        def failed(reason: Failure) -> None:
            log.warn(
                "crl {listener} {url}: persisted CRL {path} not usable: {why}",
                listener=self.listener.name,
                url=source.url,
                path=path,
                why=reason.getErrorMessage(),
            )

        return d.addCallbacks(loaded, failed)

    def _refresh(self, source: _Source) -> defer.Deferred[None]:
        if source.in_flight is not None:
            return source.in_flight
        limit = self.listener.crl_cache_max_size
        try:
            d: defer.Deferred[Any] = self._fetcher.fetch_chunks(
                source.url, self.listener.crl_cache_http_timeout, limit
            )
        except Exception:
            d = defer.fail()

        def process(body: list[bytes]) -> defer.Deferred[list[LoadedCrl]]:
            size = sum(map(len, body))
            header = encode_request(
                self._trust_pem,
                self._reactor.seconds(),
                CLOCK_SKEW,
                self._persist_path(source.url),
                source.url,
                self.cache.current_infos(),
            )
            return self._processor.process(header, body, max(size, 4096) * _OUTPUT_PER_BODY_BYTE)

        d.addCallback(process)
        d.addCallbacks(lambda crls: self._fetched(source, crls), lambda f: self._failed(source, f))
        d.addErrback(lambda f: log.failure("CRL refresh of {url} failed", f, url=source.url))

        def done(_: object) -> None:
            source.in_flight = None
            source.attempted = True
            waiters, source.waiters = source.waiters, []
            for w in waiters:
                w.callback(None)

        d.addBoth(done)
        if not d.called:
            source.in_flight = d
        return d

    def _fetched(self, source: _Source, crls: list[LoadedCrl]) -> None:
        source.state.last_fetch = self._reactor.seconds()
        source.state.last_error = None
        self._install(source, crls, None, schedule=True)

    def _install(
        self, source: _Source, crls: list[LoadedCrl], result: str | None, schedule: bool = False
    ) -> None:
        verdicts = [self.cache.install(c, source.url) for c in crls]
        installed = [c for c, v in zip(crls, verdicts, strict=True) if v == "newer"]
        if result is None:
            result = "updated" if installed else ("older" if "older" in verdicts else "unchanged")
        source.state.last_result = result
        source.state.size = crls[0].info.size if crls else None
        source.state.crls = [
            {
                "issuer": c.info.issuer_text,
                "number": c.info.number,
                "this_update": c.info.this_update,
                "next_update": c.info.next_update,
                "entries": c.info.count,
            }
            for c in crls
        ]
        if schedule:
            self._schedule(source, ok=True)
        level = log.warn if result == "older" else log.info
        level(
            "crl {listener} {url}: {result}; {details} next refresh {next_refresh}",
            listener=self.listener.name,
            url=source.url,
            result=result if result != "older" else "older than the CRL held, kept the held one",
            details="; ".join(
                f"issuer={c.info.issuer_text} number={c.info.number} "
                f"thisUpdate={_iso(c.info.this_update)} nextUpdate={_iso(c.info.next_update)} "
                f"entries={c.info.count} size={c.info.size}"
                for c in crls
            ),
            next_refresh=_iso(source.state.next_refresh),
        )
        if installed:
            self.on_update(installed)

    def _failed(self, source: _Source, reason: Failure) -> None:
        error = reason.value
        kind = getattr(error, "kind", None)
        if not isinstance(error, (FetchError, CrlError)):
            log.failure("crl {url}: unexpected failure", reason, url=source.url)
        source.state.last_fetch = self._reactor.seconds()
        source.state.last_result = "error"
        source.state.last_error = (
            f"{kind}: {getattr(error, 'detail', str(error))}" if kind else str(error)
        )
        self._schedule(source, ok=False)
        log.warn(
            "crl {listener} {url}: fetch failed ({error}); keeping the last good CRL "
            "({held}); retry at {retry}",
            listener=self.listener.name,
            url=source.url,
            error=source.state.last_error,
            held="none held" if not source.state.crls else "held",
            retry=_iso(source.state.next_refresh),
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
        source = _Source(url, CrlSourceState(url, discovered=True))
        self.sources[url] = source
        self._discovered[url] = None
        while len(self._discovered) > self.listener.crl_cache_capacity:
            old, _ = self._discovered.popitem(last=False)
            evicted = self.sources.pop(old)
            if evicted.in_flight is not None:
                evicted.in_flight.cancel()
            self.cache.forget_source(old)
            log.info(
                "crl {listener}: evicted distribution point {url} (capacity)",
                listener=self.listener.name,
                url=old,
            )
        log.info(
            "crl {listener}: added distribution point {url}", listener=self.listener.name, url=url
        )
        if fetch:
            self._first_round(source)
        return source

    def when_attempted(self, url: str) -> defer.Deferred[None]:
        """Fires once the source has finished its first fetch (whatever the outcome)."""
        source = self.sources.get(url) or self._add_discovered(url)
        if source is None:
            return defer.succeed(None)
        if source.attempted and source.in_flight is None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        source.waiters.append(d)
        return d

    # -- persistence -----------------------------------------------------------------------

    def _persist_dir(self) -> str | None:
        base = self.listener.crl_cache_dir
        return os.path.join(base, self.listener.name) if base else None

    def _persist_path(self, url: str) -> str | None:
        directory = self._persist_dir()
        if directory is None:
            return None
        return os.path.join(directory, hashlib.sha256(url.encode()).hexdigest()[:32] + ".crl")

    def _restore_discovered(self) -> None:
        """Re-add the distribution points persisted by an earlier run (start-up only)."""
        directory = self._persist_dir()
        if not self.listener.crl_cache_from_cert or not directory or not os.path.isdir(directory):
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
