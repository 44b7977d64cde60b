"""The authorization hook (``auth_http_url``): an HTTP service asked at each CONNECT, for
what files cannot say (EMQX's HTTP authorization with ``${cert_common_name}``).

The question is a POST of JSON (``AuthRequest.body``); the answer HTTP 200 with
``{"result": "allow" | "deny"}`` and optionally ``"username"``, the name the broker is to
see (``read_answer``, pure). ``Authorizer.ask`` never fails: it fires with a ``Decision``
(refusal or None, the detail for the log, the new user name), from its cache when an answer
for the same certificate, client id and user name is younger than ``auth_http_cache_ttl``,
else from one request (devices asking the same question share it), at most
``auth_http_max_requests`` in flight, within ``auth_http_timeout`` (the queue included).
Whatever goes wrong (down, slow, another status, a redirect, over 64 KB, not the JSON
above) is decided by ``auth_http_failure_policy`` and is never cached. The device is held
meanwhile (``Session``'s AUTH_HOLD), not the reactor.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.choices import FailurePolicy
from gateway.config.model import AuthSettings
from gateway.failures import plain_reason
from gateway.proxy.identity import common_name
from gateway.reasons import Reason

log = Logger()

MAX_ANSWER = 64 * 1024
CACHE_ENTRIES = 100_000
_HEADERS = {b"content-type": [b"application/json"], b"accept": [b"application/json"]}

# (the refusal, or None to admit; the detail for the log; the user name for the broker)
Decision = tuple[Reason | None, str, str | None]
Fetch = Callable[..., defer.Deferred[bytes]]  # HttpFetcher.fetch


@attrs.frozen
class AuthRequest:
    """What the hook is told of a device at its CONNECT."""

    listener: str
    peer: str
    client_id: str
    username: str | None
    protocol_level: int
    cert_fingerprint: str | None = None  # SHA-256 of the DER, hex
    tenant: str | None = None  # the tenant its server name (or match_ca) chose
    # The certificate (cryptography's, or a callable giving it): read only when the hook is
    # asked, not when the cache answers.
    cert: Any = attrs.field(default=None, eq=False, repr=False)

    def key(self) -> tuple[str | None, str, str | None, str | None]:
        """What an answer is cached under (the listener has its own cache)."""
        return self.cert_fingerprint, self.client_id, self.username, self.tenant

    def body(self) -> bytes:
        cert = self.cert() if callable(self.cert) else self.cert
        return json.dumps(
            {
                "clientid": self.client_id,
                "username": self.username,
                "cert_subject": cert.subject.rfc4514_string() if cert else None,
                "cert_common_name": common_name(cert) if cert else None,
                "cert_serial": format(cert.serial_number, "X") if cert else None,
                "cert_fingerprint": self.cert_fingerprint,
                "cert_issuer": cert.issuer.rfc4514_string() if cert else None,
                "listener": self.listener,
                "tenant": self.tenant,
                "peer_address": self.peer,
                "protocol_level": self.protocol_level,
            }
        ).encode("utf-8")


@attrs.frozen
class AuthAnswer:
    allowed: bool
    username: str | None = None


def read_answer(body: bytes) -> AuthAnswer:
    """The hook's answer; ValueError, in plain words, for anything else."""
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        raise ValueError("the answer is not JSON") from None
    if not isinstance(answer, dict):
        raise ValueError("the answer is not a JSON object")
    result = answer.get("result")
    if result not in ("allow", "deny"):
        raise ValueError('"result" is neither "allow" nor "deny"')
    username = answer.get("username")
    if username is not None:
        if not isinstance(username, str):
            raise ValueError('"username" is not a string')
        try:
            size = len(username.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError('"username" is not valid UTF-8 (a lone surrogate)') from None
        if size > 65535 or "\x00" in username:
            raise ValueError('"username" is not an MQTT string (over 65535 bytes, or a NUL)')
    return AuthAnswer(result == "allow", username if result == "allow" else None)


class AnswerCache:
    """Answers by key for ``ttl`` seconds, at most ``CACHE_ENTRIES`` (the oldest go first)."""

    def __init__(self, ttl: float, clock: IReactorTime) -> None:
        self.ttl = ttl
        self._clock = clock
        self._answers: dict[Any, tuple[float, AuthAnswer]] = {}

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: Any) -> AuthAnswer | None:
        held = self._answers.get(key)
        if held is None:
            return None
        if held[0] <= self._clock.seconds():
            del self._answers[key]
            return None
        return held[1]

    def put(self, key: Any, answer: AuthAnswer) -> None:
        if self.ttl <= 0:
            return
        self._answers.pop(key, None)
        while len(self._answers) >= CACHE_ENTRIES:
            del self._answers[next(iter(self._answers))]
        self._answers[key] = (self._clock.seconds() + self.ttl, answer)


class Authorizer:
    """One listener's hook: ask, cache, share, bound, decide."""

    def __init__(
        self, listener: str, settings: AuthSettings, fetch: Fetch, reactor: IReactorTime
    ) -> None:
        assert settings.url is not None
        self.listener = listener
        self.settings = settings
        self._fetch = fetch
        self._reactor = reactor
        self.cache = AnswerCache(settings.cache_ttl, reactor)
        self._slots = defer.DeferredSemaphore(settings.max_requests)
        self._asking: dict[Any, list[defer.Deferred[Decision]]] = {}
        self.counts = {"allow": 0, "deny": 0, "failed": 0, "cached": 0, "shared": 0}
        self._failures_since, self._failures_unlogged = -1e9, 0

    @property
    def in_flight(self) -> int:
        return len(self._asking)

    def ask(self, request: AuthRequest) -> defer.Deferred[Decision]:
        key = request.key()
        cached = self.cache.get(key)
        if cached is not None:
            self.counts["cached"] += 1
            return defer.succeed(self._decided(cached, "cached"))
        waiting: defer.Deferred[Decision] = defer.Deferred()
        if key in self._asking:
            self.counts["shared"] += 1
            self._asking[key].append(waiting)
            return waiting
        self._asking[key] = [waiting]
        d: defer.Deferred[Any] = self._slots.run(self._post, request.body())
        d.addTimeout(self.settings.timeout, self._reactor, onTimeoutCancel=_timed_out)
        d.addCallbacks(lambda body: self._answered(key, body), self._failed)
        d.addCallback(lambda decision: self._tell(key, decision))
        return waiting

    def _post(self, body: bytes) -> defer.Deferred[bytes]:
        assert self.settings.url is not None
        return self._fetch(
            self.settings.url, self.settings.timeout, MAX_ANSWER, "POST", body, _HEADERS
        )

    def _answered(self, key: Any, body: bytes) -> Decision:
        try:
            answer = read_answer(body)
        except ValueError as e:
            return self._failure(str(e))
        self.cache.put(key, answer)
        self.counts["allow" if answer.allowed else "deny"] += 1
        return self._decided(answer, "answered")

    def _failed(self, failure: Failure) -> Decision:
        return self._failure(str(failure.value) if failure.check(_Late) else plain_reason(failure))

    def _failure(self, why: str) -> Decision:
        self.counts["failed"] += 1
        self._log_failure(why)
        if self.settings.failure_policy is FailurePolicy.ACCEPT:
            return None, f"auth_http failed ({why}): accepted by auth_http_failure_policy", None
        return Reason.AUTH_UNAVAILABLE, f"auth_http failed: {why}", None

    def _decided(self, answer: AuthAnswer, how: str) -> Decision:
        if not answer.allowed:
            return Reason.AUTH_DENIED, f"auth_http: deny ({how})", None
        return None, f"auth_http: allow ({how})", answer.username

    def _tell(self, key: Any, decision: Decision) -> None:
        for waiting in self._asking.pop(key, []):
            waiting.callback(decision)

    def _log_failure(self, why: str) -> None:
        """At most one line per 10 seconds per listener (a storm against a dead hook)."""
        now = self._reactor.seconds()
        if now - self._failures_since < 10.0:
            self._failures_unlogged += 1
            return
        more = self._failures_unlogged
        self._failures_since, self._failures_unlogged = now, 0
        log.warn(
            "auth_http {listener}: no valid answer: {why}{more}",
            listener=self.listener,
            why=why,
            more=f" ({more} more failures in the last 10 s)" if more else "",
        )


class _Late(Exception):
    pass


def _timed_out(result: object, seconds: float) -> None:
    raise _Late(f"no answer within {seconds:g}s")
