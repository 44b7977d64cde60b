"""OCSP checking of client certificates: the answers held, and the client that asks for them.

``OcspAnswers`` (sans-IO) holds one validated answer per certificate, keyed as OCSP keys
them: (SHA-1 of the issuer's public key, serial). The verify callback reads it
synchronously (``OcspChecker.lookup``): a usable answer decides at once; none makes the
device wait after its handshake for ``OcspChecker.ask``.

``OcspClient`` (Twisted) asks the responders: one request in flight per certificate however
many connections wait for it, at most ``max_requests`` in flight to one responder (the rest
queue), each bounded by ``http_timeout``; every answer is validated by
``gateway.revocation.ocsp.validate`` (the stapling path's code) before it is held. It
refreshes the answers of devices with live sessions, keeps the answers in ``ocsp_cache.dir``
across restarts, and reports a 'revoked' refresh so that live sessions are closed.
"""

from __future__ import annotations

import base64
import collections
import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs
from cryptography import x509
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import timers
from gateway.config.model import ClientOcspSettings
from gateway.errors import GatewayError, describe_error
from gateway.offload import off_reactor
from gateway.reasons import OcspVerdict
from gateway.revocation import ocsp
from gateway.revocation.chains import IssuerIndex
from gateway.revocation.ocsp_answers import (
    Key,
    OcspAnswer,
    OcspAnswers,
    OcspQuestion,
    issuer_key_hash,
    request_for,
    write_answers,
)

log = Logger()

REFRESH_TICK = 10.0  # how often live sessions' answers are looked at for a refresh
PERSIST_TICK = 60.0  # how often changed answers are written to ocsp_cache.dir
REFRESH_LEAD = 0.5  # refresh at the latest this far (as a share) from thisUpdate to nextUpdate


@attrs.define
class ResponderStats:
    requests: int = 0
    failures: int = 0
    in_flight: int = 0
    queued: int = 0
    last_error: str | None = None


class OcspClient(service.Service):
    """Asks responders about client certificates for one listener (one process, or the
    master for every worker)."""

    def __init__(
        self,
        listener: str,
        settings: ClientOcspSettings,
        reactor: Any,
        fetcher: Any,
        issuers: IssuerIndex,
        cache_dir: str | None,
        cooperate: Callable[[Iterator[Any]], Any],
        remote: Callable[[OcspQuestion, float], defer.Deferred[bytes]] | None = None,
        on_revoked: Callable[[Key], None] = lambda key: None,
    ) -> None:
        """``remote``: in a worker, how an answer is obtained from the master (the DER it
        validated, validated here again); None: from the responder, with ``fetcher``."""
        self.name = f"ocsp-client:{listener}"
        self.remote = remote
        self.listener = listener
        self.settings = settings
        self.reactor = reactor
        self.fetcher = fetcher
        self.issuers = issuers
        self.answers = OcspAnswers(reactor, settings.cache_size, settings.grace_period)
        self.responders: dict[str, ResponderStats] = {}
        self._limits: dict[str, defer.DeferredSemaphore] = {}
        self._in_flight: dict[Key, defer.Deferred[OcspAnswer]] = {}
        self._waiters: dict[Key, list[defer.Deferred[OcspAnswer]]] = {}
        self._by_key: dict[bytes, x509.Certificate] | None = None
        self._questions: dict[Key, OcspQuestion] = {}  # of live sessions, for refreshes
        self._live: collections.Counter[Key] = collections.Counter()
        self.on_revoked = on_revoked  # an answer says a certificate is revoked
        self._path = os.path.join(cache_dir, f"{listener}.client-ocsp.json") if cache_dir else None
        self._refresh = timers.looping(self._refresh_live, reactor, "the OCSP answers' refresh")
        self._persist = timers.looping(self._write, reactor, "writing the OCSP answers")
        self.loaded: defer.Deferred[None] = defer.Deferred()
        self.cooperate = cooperate  # the process's cooperator's: restoring kept answers

    # -- lifecycle --------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        tick = min(REFRESH_TICK, max(0.5, self.settings.refresh_interval / 2))
        timers.start(self._refresh, tick, "the OCSP answers' refresh")
        if self._path is not None:
            timers.start(self._persist, PERSIST_TICK, "writing the OCSP answers")
            self._read().addBoth(lambda _: self.loaded.callback(None))
        else:
            self.loaded.callback(None)

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        for call in (self._refresh, self._persist):
            if call.running:
                call.stop()
        if self._path is not None and self.answers.changed:
            return self._write()
        return None

    # -- asking -----------------------------------------------------------------------------

    def question_for(
        self,
        key_hash: bytes,
        serial: int,
        responder: str | None,
        subject: str,
        issuer_der: bytes = b"",
    ) -> OcspQuestion | None:
        """A worker's question: its issuer from this process's CA bundle, else the one the
        worker verified the device's chain with (``issuer_der``); None if neither has the
        key hash."""
        if self._by_key is None:
            self._by_key = {issuer_key_hash(c): c for c in self.issuers.all()}
        issuer = self._by_key.get(key_hash)
        if issuer is None and issuer_der:
            try:
                candidate = x509.load_der_x509_certificate(issuer_der)
            except ValueError:
                return None
            if issuer_key_hash(candidate) == key_hash:
                issuer = candidate
        if issuer is None:
            return None
        return OcspQuestion((key_hash, serial), serial, issuer, responder, subject)

    def ask(self, question: OcspQuestion, fresher_than: float = 0.0) -> defer.Deferred[OcspAnswer]:
        """The answer about ``question``'s certificate: a held one fetched after
        ``fresher_than`` and still usable, else a new one (one request in flight per
        certificate). Fails with GatewayError if none can be obtained."""
        held = self.answers.peek(question.key)
        if (
            held is not None
            and held.fetched > fresher_than
            and self.reactor.seconds() <= held.next_update
        ):
            return defer.succeed(held)
        key = question.key
        # Each waiter has its own Deferred: the one request's outcome goes to all of them.
        mine: defer.Deferred[OcspAnswer] = defer.Deferred()
        self._waiters.setdefault(key, []).append(mine)
        if key not in self._in_flight:
            running = self._fetch(question, fresher_than)
            self._in_flight[key] = running

            def done(result: Any) -> None:
                self._in_flight.pop(key, None)
                for waiter in self._waiters.pop(key, []):
                    if isinstance(result, Failure):
                        waiter.errback(result)
                    else:
                        waiter.callback(result)

            running.addBoth(done)
        return mine

    def _fetch(self, q: OcspQuestion, fresher_than: float) -> defer.Deferred[OcspAnswer]:
        if self.remote is not None:
            return self.remote(q, fresher_than).addCallback(self._validated, q)
        if q.responder is None:
            return defer.fail(
                GatewayError("no_responder", f"no OCSP responder known for {q.subject}")
            )
        responder = q.responder
        stats = self.responders.setdefault(responder, ResponderStats())
        limit = self._limits.get(responder)
        if limit is None:
            limit = self._limits[responder] = defer.DeferredSemaphore(self.settings.max_requests)
        stats.queued += 1

        def request() -> defer.Deferred[OcspAnswer]:
            stats.queued -= 1
            stats.in_flight += 1
            stats.requests += 1
            body = request_for(q)
            d = self.fetcher.fetch(
                responder,
                self.settings.http_timeout,
                ocsp.MAX_RESPONSE_SIZE,
                method="POST",
                body=body,
                headers={b"Content-Type": [b"application/ocsp-request"]},
            )
            d.addCallback(self._validated, q)

            def over(result: Any) -> Any:
                stats.in_flight -= 1
                if isinstance(result, Failure):
                    stats.failures += 1
                    stats.last_error = describe_error(result.value)
                return result

            return d.addBoth(over)

        return limit.run(request)

    def _validated(self, der: bytes, q: OcspQuestion) -> OcspAnswer:
        now = self.reactor.seconds()
        info = ocsp.validate_serial(der, q.serial, q.issuer, now, max_age=self.settings.max_age)
        answer = OcspAnswer(
            info.status, info.this_update, info.next_update, now, der, q.responder or ""
        )
        previous = self.answers.peek(q.key)
        if self.answers.put(q.key, answer) and answer.status is OcspVerdict.REVOKED:
            if previous is None or previous.status is not OcspVerdict.REVOKED:
                log.warn(
                    "ocsp-client {listener}: {subject} (serial {serial:X}) is revoked "
                    "(responder {responder})",
                    listener=self.listener,
                    subject=q.subject,
                    serial=q.serial,
                    responder=q.responder,
                )
            self.on_revoked(q.key)
        return answer

    # -- live sessions ----------------------------------------------------------------------

    def track(self, questions: Iterable[OcspQuestion]) -> None:
        for q in questions:
            self._live[q.key] += 1
            self._questions[q.key] = q

    def untrack(self, keys: Iterable[Key]) -> None:
        for key in keys:
            self._live[key] -= 1
            if self._live[key] <= 0:
                del self._live[key]
                self._questions.pop(key, None)

    def _refresh_live(self) -> None:
        """Ask again about the certificates of live sessions whose answer is older than the
        refresh interval or past halfway to its nextUpdate."""
        now = self.reactor.seconds()
        for key in list(self._live):
            q = self._questions.get(key)
            held = self.answers.peek(key)
            if q is None or key in self._in_flight:
                continue
            if held is not None:
                lead = held.this_update + (held.next_update - held.this_update) * REFRESH_LEAD
                if now < held.fetched + self.settings.refresh_interval and now < lead:
                    continue
            # An answer another worker had fetched within half an interval will do.
            fresh = now - self.settings.refresh_interval / 2
            self.ask(q, fresher_than=fresh).addErrback(self._refresh_failed, q)

    def _refresh_failed(self, failure: Failure, q: OcspQuestion) -> None:
        log.info(
            "ocsp-client {listener}: refresh for {subject} failed: {why}",
            listener=self.listener,
            subject=q.subject,
            why=describe_error(failure.value),
        )

    # -- persistence ------------------------------------------------------------------------

    def _write(self) -> defer.Deferred[None]:
        if self._path is None or not self.answers.changed:
            return defer.succeed(None)
        self.answers.changed = False
        # The answers are immutable: serialised and written in a thread (100,000 of them
        # are some 200 MB of JSON, which the reactor thread must not build).
        d = off_reactor(self.reactor, write_answers, self._path, self.answers.items())
        return d.addErrback(self._file_failed, "write")

    def _read(self) -> defer.Deferred[None]:
        """The answers kept by an earlier run, each validated again (cooperatively)."""
        path = self._path
        assert path is not None

        def read() -> Any:
            try:
                with open(path, "rb") as f:
                    return json.loads(f.read())
            except FileNotFoundError:
                return None

        def restore(data: Any) -> defer.Deferred[None] | None:
            if not isinstance(data, dict) or not isinstance(data.get("answers"), list):
                return None
            by_key = {issuer_key_hash(c): c for c in self.issuers.all()}
            kept = 0

            def each() -> Iterable[None]:
                nonlocal kept
                now = self.reactor.seconds()
                for item in data["answers"]:
                    try:
                        key = (bytes.fromhex(item["key"]), int(item["serial"]))
                        issuer = by_key.get(key[0])
                        if issuer is None:
                            continue
                        der = base64.b64decode(item["der"])
                        info = ocsp.validate_serial(
                            der, key[1], issuer, now, max_age=self.settings.max_age
                        )
                        self.answers.put(
                            key,
                            OcspAnswer(
                                info.status,
                                info.this_update,
                                info.next_update,
                                float(item["fetched"]),
                                der,
                                str(item["responder"]),
                            ),
                        )
                        kept += 1
                    except (GatewayError, KeyError, ValueError, TypeError):
                        pass  # expired or damaged: asked again when needed
                    yield None

            done = self.cooperate(iter(each())).whenDone()

            def report(_: object) -> None:
                self.answers.changed = False
                log.info(
                    "ocsp-client {listener}: {kept} answer(s) restored from {path}",
                    listener=self.listener,
                    kept=kept,
                    path=path,
                )

            return done.addCallback(report)

        d = off_reactor(self.reactor, read)
        d.addCallback(restore)
        return d.addErrback(self._file_failed, "read")

    def _file_failed(self, failure: Failure, what: str) -> None:
        log.warn(
            "ocsp-client {listener}: could not {what} {path}: {why}",
            listener=self.listener,
            what=what,
            path=self._path,
            why=describe_error(failure.value),
        )

    # -- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "answers": len(self.answers),
            "hits": self.answers.hits,
            "misses": self.answers.misses,
            "by_status": self.answers.by_status(),
            "oldest": self.answers.oldest(),
            "live": len(self._live),
            "responders": {url: attrs.asdict(s) for url, s in self.responders.items()},
        }
