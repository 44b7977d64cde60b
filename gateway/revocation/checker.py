"""The handshake-time revocation decision: a synchronous, read-only lookup in the CrlCache,
and the decision on a client held after its CONNECT while its CRL is fetched."""

from __future__ import annotations

from collections import Counter

from cryptography import x509
from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from gateway.config.model import CrlSettings
from gateway.peer import PeerVerification, PendingCrl
from gateway.reasons import CrlVerdict, Reason
from gateway.revocation.chains import IssuerIndex
from gateway.revocation.crl import distribution_point_urls, freshest_urls
from gateway.revocation.crl_service import CrlCache, CrlService
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

    Reads only what the CrlService prepared. The leaf must be covered by a CRL (else the
    crl_expired_policy decides, or, with crl_cache_from_cert, the client is held after its
    CONNECT while the distribution point is fetched); intermediates are checked whenever a
    CRL of their issuer is held.
    """

    def __init__(
        self,
        cache: CrlCache,
        settings: CrlSettings,
        crl_service: CrlService | None,
        reactor: IReactorTime,
        issuers: IssuerIndex | None = None,
    ) -> None:
        self.cache = cache
        self.issuers = issuers or IssuerIndex.of([])
        self.settings = settings
        self.reject_unknown = settings.expired_policy == "reject"
        self.crl_service = crl_service
        self._reactor = reactor
        self.counts: Counter[str] = Counter()

    def check(
        self,
        cert: x509.Certificate,
        issuer: bytes,
        serial: int,
        depth: int,
        verification: PeerVerification | None,
    ) -> tuple[Reason, int] | None:
        """None to accept; else (refusal reason, X509 error to fail with). Every certificate
        below the trust anchor is checked (as OpenSSL's crl_check_all): one whose status
        cannot be determined follows crl_expired_policy."""
        if self.settings.from_cert and self.crl_service is not None:
            for url in freshest_urls(cert):  # its delta CRLs: in force from the next check
                self.crl_service.discover(url)
        trusted = set(verification.chain) if verification is not None else None
        status = self.cache.status(issuer, serial, lambda: cert_scope(cert), trusted)
        if status is CrlVerdict.GOOD:
            return None
        if status is CrlVerdict.REVOKED:
            self.counts["revoked"] += 1
            return Reason.REVOKED, ERR_REVOKED
        if (
            status is CrlVerdict.MISSING
            and self.settings.from_cert
            and self.crl_service is not None
        ):
            urls = distribution_point_urls(cert)
            for url in urls:
                self.crl_service.discover(url)  # a CA's too: in force for its next device
            if urls and depth == 0:
                if verification is not None:
                    verification.crl_pending = PendingCrl(
                        urls[0], issuer, serial, cert, tuple(verification.chain)
                    )
                self.counts["held_for_crl"] += 1
                return None  # decided after CONNECT, once the CRL is fetched
        return self._policy(status)

    def check_resumed(
        self, leaf: x509.Certificate, serial: int, verification: PeerVerification
    ) -> tuple[Reason, str] | None:
        """A resumed session ran no verify callback: check its chain now, exactly as a full
        handshake would (trust anchor down to the leaf), recording it for the live sweep.
        None to accept; else (reason class, detail)."""
        path = self.issuers.path(leaf)
        if path is None:
            return (
                Reason.UNKNOWN_CA,
                "resumed session: the certificate no longer chains to cacertfile",
            )
        for depth in range(len(path) - 1, -1, -1):
            cert = path[depth]
            cert_serial = serial if depth == 0 else cert.serial_number
            issuer = cert.issuer.public_bytes()
            verification.chain.append((issuer, cert_serial))
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

    def decide_later(self, pending: PendingCrl) -> defer.Deferred[tuple[Reason | None, str]]:
        """For a held client: wait for its distribution point's first fetch (bounded), then
        (None, detail) to admit it or (reason, detail) to refuse it. Never fails."""
        assert self.crl_service is not None
        wait = self.crl_service.when_attempted(pending.url)
        wait.addTimeout(self.settings.http_timeout + HOLD_PROCESSING_ALLOWANCE, self._reactor)

        def decide(_: object) -> tuple[Reason | None, str]:
            return self.decide_held(pending), f"after fetching {pending.url}"

        return wait.addBoth(decide)

    def decide_held(self, pending: PendingCrl) -> Reason | None:
        """After a held client's distribution point was fetched: None or a refusal reason."""
        cert = pending.cert
        scope = (lambda: cert_scope(cert)) if cert is not None else None
        status = self.cache.status(pending.issuer, pending.serial, scope, set(pending.chain))
        if status is CrlVerdict.GOOD:
            return None
        if status is CrlVerdict.REVOKED:
            self.counts["revoked"] += 1
            return Reason.REVOKED
        verdict = self._policy(status)
        return None if verdict is None else verdict[0]

    def _policy(self, status: CrlVerdict) -> tuple[Reason, int] | None:
        """crl_expired_policy for a verdict that does not decide (MISSING, EXPIRED,
        INCOMPLETE): refuse (reject) or count."""
        reason = status.refusal
        if self.reject_unknown:
            self.counts[reason.value] += 1
            return reason, ERR_CRL_EXPIRED if status is CrlVerdict.EXPIRED else ERR_NO_CRL
        self.counts[f"{reason.value}_accepted"] += 1
        return None

    def chain_revoked(self, chain: list[tuple[bytes, int]]) -> bool:
        """For live sessions: is any certificate of a recorded chain now revoked?"""
        return any(
            self.cache.status(issuer, serial) is CrlVerdict.REVOKED for issuer, serial in chain
        )
