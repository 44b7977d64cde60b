"""The CA certificates of a listener's bundle, indexed to rebuild a client's chain without
OpenSSL's help. Pure: no I/O, no Twisted.

A resumed TLS session runs no certificate verification, so no verify callback reports the
chain; the session still holds the leaf. Its issuers are looked up here (by name, then by key
identifier or signature when names repeat), so that a resumed connection is checked against
the revocation data in force exactly as a full handshake is.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature


def _key_id(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> bytes | None:
    try:
        value = cert.extensions.get_extension_for_class(kind).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    if isinstance(value, x509.SubjectKeyIdentifier):
        return value.digest
    if isinstance(value, x509.AuthorityKeyIdentifier):
        return value.key_identifier
    return None


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s key signed ``cert`` (names are compared by the caller)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@attrs.frozen(eq=False)
class IssuerIndex:
    """CA certificates by subject (DER), each with the path up to its trust anchor."""

    _by_subject: dict[bytes, tuple[x509.Certificate, ...]]
    # leaf -> its chain as ``chain`` gives it, for the leaves that chained (a resumed
    # session's device, again and again); bounded: when full it starts again.
    _chains: dict[x509.Certificate, tuple[tuple[x509.Certificate, bytes], ...]] = attrs.field(
        factory=dict, init=False
    )

    @classmethod
    def of(cls, cas: Sequence[x509.Certificate]) -> IssuerIndex:
        by_subject: dict[bytes, list[x509.Certificate]] = {}
        for ca in cas:
            by_subject.setdefault(ca.subject.public_bytes(), []).append(ca)
        return cls({k: tuple(v) for k, v in by_subject.items()})

    def all(self) -> list[x509.Certificate]:
        return [c for certs in self._by_subject.values() for c in certs]

    def named(self, subject: bytes) -> tuple[x509.Certificate, ...]:
        """The CA certificates whose subject is ``subject`` (DER)."""
        return self._by_subject.get(subject, ())

    def issuer_of(
        self, cert: x509.Certificate, also: VerifiedIssuers | None = None
    ) -> x509.Certificate | None:
        """The CA of the bundle that issued ``cert``, else one of ``also``."""
        found = _pick(cert, self._by_subject.get(cert.issuer.public_bytes(), ()))
        if found is None and also is not None:
            found = _pick(cert, also.named(cert.issuer.public_bytes()))
        return found

    def path(
        self, leaf: x509.Certificate, limit: int = 16, also: VerifiedIssuers | None = None
    ) -> list[x509.Certificate] | None:
        """[leaf, its issuer, ..., the self-signed anchor], or None if it does not chain to
        the bundle (through ``also``'s intermediates where the bundle lacks them). ``limit``
        bounds the walk (a loop of cross-signed CAs)."""
        out = [leaf]
        cert = leaf
        while cert.issuer != cert.subject:
            if len(out) > limit:
                return None
            issuer = self.issuer_of(cert, also)
            if issuer is None:
                return None
            out.append(issuer)
            cert = issuer
        return out

    def chain(
        self, leaf: x509.Certificate, also: VerifiedIssuers | None = None
    ) -> tuple[tuple[x509.Certificate, bytes], ...] | None:
        """``path(leaf, also=also)`` with each certificate's issuer name (DER), kept for
        the leaves that chain (the index never changes, and ``also`` only grows: a chain
        found stays right; one not found is looked for again next time)."""
        known = self._chains.get(leaf)
        if known is None:
            path = self.path(leaf, also=also)
            if path is None:
                return None
            known = tuple((cert, cert.issuer.public_bytes()) for cert in path)
            if len(self._chains) >= _CHAINS_KEPT:
                self._chains.clear()
            self._chains[leaf] = known
        return known


_CHAINS_KEPT = 1024
_VERIFIED_KEPT = 4096


class VerifiedIssuers:
    """Intermediate CA certificates that OpenSSL verified up to this listener's trust
    anchors in full handshakes (devices may send their intermediate while cacertfile holds
    only the root). A resumed session carries no chain: its path is rebuilt through these.
    Bounded: once full, it stops growing."""

    def __init__(self) -> None:
        self._by_subject: dict[bytes, list[x509.Certificate]] = {}
        self._count = 0

    def add(self, cert: x509.Certificate) -> None:
        if self._count >= _VERIFIED_KEPT:
            return
        known = self._by_subject.setdefault(cert.subject.public_bytes(), [])
        if all(c != cert for c in known):
            known.append(cert)
            self._count += 1

    def named(self, subject: bytes) -> list[x509.Certificate]:
        return self._by_subject.get(subject, [])


def _pick(
    cert: x509.Certificate, candidates: Sequence[x509.Certificate]
) -> x509.Certificate | None:
    """The candidate (all named as ``cert``'s issuer) that issued ``cert``."""
    if len(candidates) == 1:
        return candidates[0]
    aki = _key_id(cert, x509.AuthorityKeyIdentifier)
    for candidate in candidates:
        ski = _key_id(candidate, x509.SubjectKeyIdentifier)
        if aki is not None and ski is not None:
            if aki == ski:
                return candidate
        elif issued_by(cert, candidate):
            return candidate
    return None
