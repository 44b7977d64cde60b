"""The one seam between the handshake and the relay: a per-connection record.

(Top level because both sides use it: ``gateway.tls`` and ``gateway.revocation`` write it,
``gateway.proxy`` reads it; in any one of them it would make the others depend on it.)

``ServerConnectionCreator`` makes a ``PeerVerification`` for each connection and attaches it
to the connection (``GatewayConnection.verification``). During the handshake the verify
callback and the revocation checker write into it, and nothing else; the connection's
protocol reads it through ``transport.getHandle()``.
Pure data: no Twisted, no OpenSSL.
"""

from __future__ import annotations

from typing import Any

import attrs
from cryptography import x509

from gateway.reasons import Reason


@attrs.frozen
class VerifyFailure:
    """Why the client's chain was refused: the first failure, for the log."""

    reason: Reason  # revoked, unknown_ca, expired, crl_missing, ...
    errno: int  # the X509 verification error OpenSSL reports
    depth: int
    subject: str
    serial: str


@attrs.frozen
class PendingCrl:
    """The leaf's CRL is being fetched from its distribution point; decide after CONNECT."""

    url: str
    issuer: bytes  # DER of the issuer Name
    serial: int
    cert: x509.Certificate | None = None  # for the scope of the CRLs that cover it
    chain: tuple[tuple[bytes, int], ...] = ()  # the chain checked above it


@attrs.frozen
class Pending:
    """What a device waits for after its handshake: its leaf's CRL being fetched (from its
    distribution point), and OCSP answers not held yet (each an ``OcspQuestion``)."""

    crl: PendingCrl | None = None
    ocsp: tuple[tuple[Any, Any], ...] = ()  # (OcspQuestion, its CRL verdict or PENDING)
    tenant: str | None = None  # whose failure policy decides (None: the listener's)


@attrs.define(slots=True, eq=False)
class PeerVerification:
    """What the handshake learnt about the client's certificate chain."""

    # (issuer DER, serial) of each verified certificate below the trust anchor: what the
    # live-session sweep re-checks after each CRL update. (Tuples, grown by concatenation:
    # a few entries per handshake, and an idle connection holds no empty lists.)
    chain: tuple[tuple[bytes, int], ...] = ()
    failure: VerifyFailure | None = None
    crl_pending: PendingCrl | None = None
    # (OcspQuestion, its CRL verdict) of certificates without an OCSP answer held.
    ocsp_pending: tuple[tuple[object, object], ...] = ()
    ocsp_checked: tuple[object, ...] = ()  # every OcspQuestion: live refreshes
    # During the handshake: the CA certificate OpenSSL verified just above the one being
    # checked (its issuer, maybe sent by the device rather than in cacertfile); cleared at
    # the leaf.
    above: x509.Certificate | None = None
    # The leaf as the verify callback parsed it, until the relay takes it for its log line
    # at the end of the handshake (then dropped: an idle connection does not keep it).
    leaf: x509.Certificate | None = None
    # The tenant whose policy judges the chain (its server name's, or the one whose
    # match_ca anchored it), set at the first certificate; None: the listener's.
    tenant: str | None = None

    def pending(self) -> Pending | None:
        """What the device must wait for after its handshake, if anything."""
        if self.crl_pending is None and not self.ocsp_pending:
            return None
        return Pending(self.crl_pending, self.ocsp_pending, self.tenant)

    def note_failure(self, failure: VerifyFailure) -> None:
        if self.failure is None:
            self.failure = failure
