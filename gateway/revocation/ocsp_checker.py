"""OCSP checking of client certificates at the handshake: which certificates it covers,
what the answers held say (synchronously, no I/O), the questions for those without one,
and the wait for their answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from cryptography import x509
from twisted.internet import defer
from twisted.python.failure import Failure

from gateway.choices import FailurePolicy, OcspCheck, WithCrl
from gateway.config.model import ClientOcspSettings
from gateway.errors import describe_error
from gateway.reasons import OcspVerdict
from gateway.revocation import ocsp
from gateway.revocation.chains import IssuerIndex
from gateway.revocation.ocsp_answers import (
    Key,
    OcspAnswer,
    OcspAnswers,
    OcspQuestion,
    issuer_key_hash,
)

_KEY_HASHES_KEPT = 4096


class Tracker(Protocol):
    """Refreshes the answers of live sessions' certificates (``OcspClient``)."""

    def track(self, questions: list[OcspQuestion]) -> None: ...
    def untrack(self, keys: tuple[Key, ...]) -> None: ...


def _status_of(answer: OcspAnswer) -> tuple[OcspVerdict, str]:
    return answer.status, ""


def _why_not(failure: Failure) -> tuple[OcspVerdict, str]:
    if failure.check(defer.TimeoutError, defer.CancelledError):
        return OcspVerdict.UNAVAILABLE, "no answer in time"
    return OcspVerdict.UNAVAILABLE, describe_error(failure.value)


class OcspChecker:
    """The handshake-time side: which certificates OCSP checks, what the answers held say
    (synchronously, no I/O), the questions for those without one, and the wait for them.

    ``asker`` obtains an answer: the listener's ``OcspClient.ask`` in one process, a call
    to the master in a worker (the master asks for every worker). ``tracker`` refreshes
    live sessions' answers; ``asks_master``: a question with no responder known goes to
    the master all the same (which may know one), rather than failing at once."""

    def __init__(
        self,
        settings: ClientOcspSettings,
        answers: OcspAnswers,
        issuers: IssuerIndex,
        asker: Callable[[OcspQuestion], defer.Deferred[OcspAnswer]],
        reactor: Any,
        tracker: Tracker | None = None,
        asks_master: bool = False,
    ) -> None:
        self.settings = settings
        self.tracker = tracker
        self.asks_master = asks_master
        self.answers = answers
        self.issuers = issuers
        self.asker = asker
        self.reactor = reactor
        self.reject = settings.failure_policy == FailurePolicy.REJECT
        self.either = settings.with_crl == WithCrl.EITHER
        self._key_hashes: dict[int, tuple[x509.Certificate, bytes]] = {}  # by id()
        # The bundle's CAs by subject, with their key hashes: the live sweep has only
        # (issuer name, serial) for each certificate of a session's chain.
        self._by_name: dict[bytes, tuple[bytes, ...]] = {}

    def covers(self, depth: int) -> bool:
        return depth == 0 or self.settings.mode == OcspCheck.CHAIN

    def key_hash(self, issuer: x509.Certificate) -> bytes:
        """The issuer's key hash, computed once per certificate object (the verifier keeps
        the CA certificates it parsed): the entry holds the object, so a reused id() of a
        freed one never answers for another."""
        known = self._key_hashes.get(id(issuer))
        if known is not None and known[0] is issuer:
            return known[1]
        if len(self._key_hashes) >= _KEY_HASHES_KEPT:
            self._key_hashes.clear()
        value = issuer_key_hash(issuer)
        self._key_hashes[id(issuer)] = (issuer, value)
        return value

    def question(
        self, cert: x509.Certificate, serial: int, issuer: x509.Certificate | None = None
    ) -> OcspQuestion | None:
        """What to ask about ``cert``: of ``issuer`` (the certificate OpenSSL verified above
        it), else of its issuer in the CA bundle (None: neither)."""
        if issuer is None:
            issuer = self.issuers.issuer_of(cert)
        if issuer is None:
            return None
        responder = self.settings.responder_url or ocsp.responder_url_of(cert)
        return OcspQuestion(
            (self.key_hash(issuer), serial),
            serial,
            issuer,
            responder,
            cert.subject.rfc4514_string(),
        )

    def status(self, q: OcspQuestion | None) -> OcspVerdict:
        """What the answers held say of ``q``'s certificate now: good, revoked, unknown,
        unavailable (no responder known; the issuer not in the bundle) or pending (ask)."""
        if q is None or q.responder is None:
            return OcspVerdict.UNAVAILABLE
        answer = self.answers.usable(q.key)
        return answer.status if answer is not None else OcspVerdict.PENDING

    def wait(
        self, questions: tuple[OcspQuestion, ...]
    ) -> defer.Deferred[list[tuple[OcspVerdict, str]]]:
        """(status, why) of each question once answered: the answer's status and "", or
        'unavailable' and what went wrong (nothing within ocsp_client_http_timeout plus a
        second, no responder, an error, an answer that does not validate). Never fails."""
        waits: list[defer.Deferred[tuple[OcspVerdict, str]]] = []
        for q in questions:
            if q.responder is None and not self.asks_master:
                unknown = (OcspVerdict.UNAVAILABLE, "no OCSP responder is known for it")
                waits.append(defer.succeed(unknown))
                continue
            d = self.asker(q)
            d.addTimeout(self.settings.http_timeout + 1.0, self.reactor)
            waits.append(d.addCallbacks(_status_of, _why_not))
        return defer.gatherResults(waits)

    def track(self, questions: list[OcspQuestion]) -> tuple[Key, ...]:
        """A session is relayed: refresh its certificates' answers while it lives."""
        if self.tracker is None or not questions:
            return ()
        self.tracker.track(questions)
        return tuple(q.key for q in questions)

    def untrack(self, keys: tuple[Key, ...]) -> None:
        if self.tracker is not None and keys:
            self.tracker.untrack(keys)

    def revoked(self, issuer_name: bytes, serial: int) -> bool:
        """For the live sweep: whether an answer held says the certificate is revoked."""
        hashes_ = self._by_name.get(issuer_name)
        if hashes_ is None:
            hashes_ = self._by_name[issuer_name] = tuple(
                self.key_hash(c) for c in self.issuers.named(issuer_name)
            )
        for key_hash in hashes_:
            answer = self.answers.peek((key_hash, serial))
            if answer is not None and answer.status is OcspVerdict.REVOKED:
                return True
        return False
