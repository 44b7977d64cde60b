"""The handshake-time revocation decision: synchronous, read-only lookups in the CRLs and
OCSP answers held, and the decision on a client held after its CONNECT while its CRL is
fetched or its OCSP answer asked for."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from gateway.choices import FailurePolicy
from gateway.config.model import CrlSettings
from gateway.peer import PeerVerification, Pending, PendingCrl
from gateway.reasons import CrlVerdict, OcspVerdict, Outcome, Reason
from gateway.revocation.chains import IssuerIndex, VerifiedIssuers
from gateway.revocation.combine import combine
from gateway.revocation.crl import distribution_point_urls, freshest_urls
from gateway.revocation.crl_service import CrlCache, CrlService
from gateway.revocation.ocsp_answers import OcspQuestion
from gateway.revocation.ocsp_checker import OcspChecker
from gateway.revocation.scope import cert_scope

_V = SSL.X509VerificationCodes
# X509 errors imposed on a refused certificate; OpenSSL turns them into TLS alerts
# (certificate_revoked for the first).
ERR_REVOKED = _V.ERR_CERT_REVOKED
ERR_NO_CRL = _V.ERR_UNABLE_TO_GET_CRL
ERR_CRL_EXPIRED = _V.ERR_CRL_HAS_EXPIRED

# A held client waits for its distribution point's first fetch: the download
# (crl_cache_http_timeout) plus this much for the worker to verify and index the CRL.
HOLD_PROCESSING_ALLOWANCE = 5.0


class RevocationChecker:
    """Decides, for each certificate of a verified chain, whether revocation refuses it.

    Reads only what the refresh services prepared: the CRLs held (``CrlService``) and the
    OCSP answers held (``OcspClient``). With CRL checking, the leaf must be covered by a CRL
    (else the crl_expired_policy decides, or, with crl_cache_from_cert, the client is held
    after its CONNECT while the distribution point is fetched); intermediates are checked
    whenever a CRL of their issuer is held. With OCSP checking, a certificate without an
    answer held is asked about while the client is held after its CONNECT. The verdicts
    combine as ``gateway.revocation.combine`` says.
    """

    def __init__(
        self,
        cache: CrlCache | None,
        settings: CrlSettings | None,
        crl_service: CrlService | None,
        reactor: IReactorTime,
        issuers: IssuerIndex | None = None,
        ocsp: OcspChecker | None = None,
        tenant_reject: Mapping[str, bool] | None = None,
        tenant_ocsp: Mapping[str, OcspChecker] | None = None,
    ) -> None:
        """``tenant_reject``: each tenant's crl_expired_policy (whether it rejects);
        ``tenant_ocsp``: the tenants with OCSP settings of their own (responder, failure
        policy; the same answers). The others' devices are judged by the listener's."""
        self.cache = cache
        self.issuers = issuers or IssuerIndex.of([])
        self.settings = settings
        self.reject_unknown = settings is None or settings.expired_policy == FailurePolicy.REJECT
        self._tenant_reject = dict(tenant_reject or {})
        self._tenant_ocsp = dict(tenant_ocsp or {})
        self.crl_service = crl_service
        self.ocsp = ocsp
        self._reactor = reactor
        self.counts: Counter[str] = Counter()
        # Intermediates OpenSSL verified in full handshakes (a device may send its own):
        # a resumed session's path is rebuilt through them where cacertfile lacks them.
        self.verified = VerifiedIssuers()

    def reject_for(self, tenant: str | None) -> bool:
        """Whether an undetermined status refuses a device of ``tenant`` (None: the
        listener's devices)."""
        if tenant is None:
            return self.reject_unknown
        return self._tenant_reject.get(tenant, self.reject_unknown)

    def ocsp_for(self, tenant: str | None) -> OcspChecker | None:
        """The OCSP checking of ``tenant``'s devices (its own settings, else the listener's)."""
        if tenant is None or self.ocsp is None:
            return self.ocsp
        return self._tenant_ocsp.get(tenant, self.ocsp)

    def note_ca(self, cert: x509.Certificate) -> None:
        """The verify callback met a CA certificate OpenSSL accepted in a chain."""
        self.verified.add(cert)

    def check(
        self,
        cert: x509.Certificate,
        issuer: bytes,
        serial: int,
        depth: int,
        verification: PeerVerification | None,
    ) -> tuple[Reason, int] | None:
        """None to accept (or hold after the handshake); else (refusal reason, X509 error to
        fail with). Every certificate below the trust anchor is checked (as OpenSSL's
        crl_check_all)."""
        crl, pending_crl = self._crl_status(cert, issuer, serial, depth, verification)
        question = None
        ocsp_status = None
        tenant = verification.tenant if verification is not None else None
        ocsp = self.ocsp_for(tenant)
        if ocsp is not None and ocsp.covers(depth):
            above = verification.above if verification is not None else None
            issuer_cert = above if above is not None and above.subject == cert.issuer else None
            if issuer_cert is None:
                issuer_cert = self.issuers.issuer_of(cert, self.verified)
            question = ocsp.question(cert, serial, issuer_cert)
            ocsp_status = ocsp.status(question)
        decision = combine(
            crl,
            ocsp_status,
            ocsp is not None and ocsp.either,
            self.reject_for(tenant),
            ocsp is not None and ocsp.reject,
        )
        if decision.outcome is Outcome.REFUSE:
            assert decision.reason is not None
            self.counts[decision.reason.value] += 1
            return decision.reason, _error_of(decision.reason, crl)
        if decision.outcome is Outcome.HOLD:
            if crl is CrlVerdict.PENDING and verification is not None:
                verification.crl_pending = pending_crl
                self.counts["held_for_crl"] += 1
            if ocsp_status is OcspVerdict.PENDING and verification is not None:
                verification.ocsp_pending += ((question, crl),)
                self.counts["held_for_ocsp"] += 1
        for key in decision.accepted:
            self.counts[f"{key}_accepted"] += 1
        if question is not None and verification is not None:
            verification.ocsp_checked += (question,)
        return None

    def _crl_status(
        self,
        cert: x509.Certificate,
        issuer: bytes,
        serial: int,
        depth: int,
        verification: PeerVerification | None,
    ) -> tuple[CrlVerdict | None, PendingCrl | None]:
        """What the CRLs held say (None: no CRL checking), or PENDING with what to wait for
        (the leaf's distribution point, with crl_cache_from_cert)."""
        if self.cache is None or self.settings is None:
            return None, None
        if self.settings.from_cert and self.crl_service is not None:
            for url in freshest_urls(cert):  # its delta CRLs: in force from the next check
                self.crl_service.discover(url)
        trusted = set(verification.chain) if verification is not None else None
        status = self.cache.status(issuer, serial, lambda: cert_scope(cert), trusted)
        if (
            status is CrlVerdict.MISSING
            and self.settings.from_cert
            and self.crl_service is not None
        ):
            urls = distribution_point_urls(cert)
            for url in urls:
                self.crl_service.discover(url)  # a CA's too: in force for its next device
            if urls and depth == 0:
                chain = verification.chain if verification is not None else ()
                return CrlVerdict.PENDING, PendingCrl(urls[0], issuer, serial, cert, chain)
        return status, None

    def check_resumed(
        self, leaf: x509.Certificate, serial: int, verification: PeerVerification
    ) -> tuple[Reason, str] | None:
        """A resumed session ran no verify callback: check its chain now, exactly as a full
        handshake would (trust anchor down to the leaf), recording it for the live sweep.
        None to accept; else (reason class, detail)."""
        path = self.issuers.chain(leaf, also=self.verified)
        if path is None:
            return (
                Reason.UNKNOWN_CA,
                "resumed session: the certificate no longer chains to cacertfile",
            )
        for depth in range(len(path) - 1, -1, -1):
            cert, issuer = path[depth]
            cert_serial = serial if depth == 0 else cert.serial_number
            verification.chain += ((issuer, cert_serial),)
            if depth == len(path) - 1:
                continue  # the trust anchor: nothing above it to revoke it
            verdict = self.check(cert, issuer, cert_serial, depth, verification)
            if verdict is not None:
                self.counts["resumed_refused"] += 1
                return verdict[0], (
                    f"resumed session refused at depth {depth}: "
                    f"{cert.subject.rfc4514_string()} ({verdict[0]})"
                )
        return None

    def decide_later(self, pending: Pending) -> defer.Deferred[tuple[Reason | None, str]]:
        """For a held client: wait for its distribution point's first fetch and for the
        OCSP answers (each bounded), then (None, detail) to admit it or (reason, detail) to
        refuse it. Never fails."""
        crl_wait: defer.Deferred[Any] = defer.succeed(None)
        if pending.crl is not None:
            assert self.crl_service is not None and self.settings is not None
            crl_wait = self.crl_service.when_attempted(pending.crl.url)
            crl_wait.addTimeout(
                self.settings.http_timeout + HOLD_PROCESSING_ALLOWANCE, self._reactor
            )
            crl_wait.addErrback(lambda _: None)
        ocsp_wait: defer.Deferred[list[tuple[OcspVerdict, str]]] = defer.succeed([])
        ocsp = self.ocsp_for(pending.tenant)
        if pending.ocsp:
            assert ocsp is not None
            ocsp_wait = ocsp.wait(tuple(q for q, _ in pending.ocsp))
        both = defer.gatherResults([crl_wait, ocsp_wait])
        return both.addCallback(lambda results: self._decide(pending, results[1]))

    def _decide(
        self, pending: Pending, answers: list[tuple[OcspVerdict, str]]
    ) -> tuple[Reason | None, str]:
        leaf_crl: CrlVerdict | None = None
        if pending.crl is not None:
            leaf_crl = self._crl_now(pending.crl)
        ocsp = self.ocsp_for(pending.tenant)
        either = ocsp is not None and ocsp.either
        ocsp_reject = ocsp is not None and ocsp.reject
        reject = self.reject_for(pending.tenant)
        decisions = []
        leaf_done = False
        for (question, crl), (status, why) in zip(pending.ocsp, answers, strict=True):
            if crl is CrlVerdict.PENDING:
                crl, leaf_done = leaf_crl, True
            decision = combine(crl, status, either, reject, ocsp_reject)
            decisions.append((decision, question, why))
        if pending.crl is not None and not leaf_done:
            decision = combine(leaf_crl, None, either, reject, False)
            decisions.append((decision, None, ""))
        waited = []
        if pending.crl is not None:
            waited.append(f"after fetching {pending.crl.url}")
        if pending.ocsp:
            waited.append("after asking the OCSP responder")
        detail = " and ".join(waited)
        for decision, question, why in decisions:
            if decision.outcome is Outcome.REFUSE:
                assert decision.reason is not None
                self.counts[decision.reason.value] += 1
                about = f" ({question.subject})" if isinstance(question, OcspQuestion) else ""
                return decision.reason, f"{detail}{about}" + (f": {why}" if why else "")
        for decision, _, _ in decisions:
            for key in decision.accepted:
                self.counts[f"{key}_accepted"] += 1
        return None, detail

    def _crl_now(self, pending: PendingCrl) -> CrlVerdict:
        assert self.cache is not None
        cert = pending.cert
        scope = (lambda: cert_scope(cert)) if cert is not None else None
        return self.cache.status(pending.issuer, pending.serial, scope, set(pending.chain))

    def decide_held(self, pending: PendingCrl) -> Reason | None:
        """After a held client's distribution point was fetched: None or a refusal reason
        (CRL checking alone)."""
        decision = combine(self._crl_now(pending), None, False, self.reject_unknown, False)
        if decision.outcome is Outcome.REFUSE:
            assert decision.reason is not None
            self.counts[decision.reason.value] += 1
            return decision.reason
        for key in decision.accepted:
            self.counts[f"{key}_accepted"] += 1
        return None

    def track(self, verification: PeerVerification) -> tuple[Any, ...]:
        """A session is relayed: with OCSP, its certificates' answers are refreshed while
        it lives. Returns what ``untrack`` takes back at its end."""
        if self.ocsp is None:
            return ()
        return self.ocsp.track(
            [q for q in verification.ocsp_checked if isinstance(q, OcspQuestion)]
        )

    def untrack(self, tracked: tuple[Any, ...]) -> None:
        if self.ocsp is not None:
            self.ocsp.untrack(tracked)

    def chain_revoked(self, chain: Sequence[tuple[bytes, int]]) -> bool:
        """For live sessions: is any certificate of a recorded chain now revoked (by a CRL
        held, or by an OCSP answer held)?"""
        for issuer, serial in chain:
            if self.cache is not None and self.cache.status(issuer, serial) is CrlVerdict.REVOKED:
                return True
            if self.ocsp is not None and self.ocsp.revoked(issuer, serial):
                return True
        return False


def _error_of(reason: Reason, crl: object) -> int:
    """The X509 error a refusal at the handshake fails with (OpenSSL's alert follows)."""
    if reason in (Reason.REVOKED, Reason.OCSP_REVOKED):
        return ERR_REVOKED
    if reason is Reason.CRL_EXPIRED:
        return ERR_CRL_EXPIRED
    return ERR_NO_CRL
