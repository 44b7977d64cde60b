"""The CRLs in force for one listener, read at handshake time (synchronously, no I/O) and
written by refreshes. Sans-IO: the clock is injected."""

from __future__ import annotations

from collections.abc import Callable, Collection

from gateway.clock import Clock
from gateway.reasons import CrlVerdict
from gateway.revocation.crl import CrlInfo, LoadedCrl, SerialIndex
from gateway.revocation.scope import ALL_REASONS, CertScope, covered_reasons, issuer_key

_NO_ENTRIES = SerialIndex.from_serials([])


class CrlCache:
    """The CRLs in force, read at handshake time and written by refreshes.

    Several CRLs of one issuer are held side by side, keyed by source URL and scope (their
    issuing distribution point), and each is replaced only by a newer CRL of the same key:
    two partitions of one CA with the same CRL number are both held, whichever arrives
    first. A certificate's status is decided from every CRL whose scope covers it, so it
    does not depend on download order (RFC 5280 §6.3.3).
    """

    def __init__(self, clock: Clock, grace: float) -> None:
        self._clock = clock
        self.grace = grace  # a reload may set it (the cache and its CRLs stay)
        # issuer (DER Name) -> (source URL, scope key) -> CRL; complete CRLs and deltas apart
        self._by_issuer: dict[bytes, dict[tuple[str, str], LoadedCrl]] = {}
        self._deltas: dict[bytes, dict[tuple[str, str], LoadedCrl]] = {}
        self._indirect: dict[bytes, dict[tuple[str, str], LoadedCrl]] = {}  # by CRL issuer

    def _all(self) -> list[tuple[tuple[str, str], LoadedCrl]]:
        return [
            item
            for shelf in (self._by_issuer, self._deltas, self._indirect)
            for held in shelf.values()
            for item in held.items()
        ]

    def held(self) -> list[tuple[str, LoadedCrl]]:
        """Every CRL in force with its source URL (what a worker snapshot carries)."""
        return [(url, crl) for (url, _), crl in self._all()]

    def replace(self, items: list[tuple[str, LoadedCrl]]) -> None:
        """Hold exactly ``items`` from now on (a worker, on a snapshot from the master)."""
        fresh = CrlCache(self._clock, self.grace)
        for url, crl in items:
            fresh.install(crl, url)
        self._by_issuer, self._deltas, self._indirect = (
            fresh._by_issuer,
            fresh._deltas,
            fresh._indirect,
        )

    def adopt(self, pairs: list[tuple[LoadedCrl, LoadedCrl]]) -> None:
        """For each (held, same CRL mapped from a snapshot): hold the mapped one instead, if
        ``held`` is still the one in force (the master's heap copy is then released)."""
        swap = {id(old): new for old, new in pairs}
        for shelf in (self._by_issuer, self._deltas, self._indirect):
            for held in shelf.values():
                for key, crl in held.items():
                    new = swap.get(id(crl))
                    if new is not None and new.info == crl.info:
                        held[key] = new

    def infos(self) -> list[CrlInfo]:
        return [c.info for _, c in self._all()]

    def loaded_from(self, url: str) -> list[LoadedCrl]:
        return [c for (u, _), c in self._all() if u == url]

    def infos_from(self, url: str) -> list[CrlInfo]:
        return [c.info for (u, _), c in self._all() if u == url]

    def install(self, loaded: LoadedCrl, url: str) -> str:
        """Install if newer than the CRL held from the same source with the same scope.
        Returns 'newer', 'same', 'older', or 'expired' (newer, but already past its
        nextUpdate while the held one is not: kept out, it would only fail clients)."""
        info = loaded.info
        if info.delta_base is not None:
            shelf = self._deltas
        elif info.scope.indirect:
            shelf = self._indirect
        else:
            shelf = self._by_issuer
        held = shelf.setdefault(info.issuer, {})
        key = (url, info.scope.key())
        current = held.get(key)
        verdict = info.compare(current.info if current else None)
        now = self._clock.seconds()
        if (
            verdict == "newer"
            and current is not None
            and info.expired(now, self.grace)
            and not current.info.expired(now, self.grace)
        ):
            return "expired"
        if verdict == "newer":
            held[key] = loaded
        return verdict

    def forget_source(self, url: str) -> None:
        """A source was evicted: drop the CRLs it provided."""
        for shelf in (self._by_issuer, self._deltas, self._indirect):
            for issuer, held in list(shelf.items()):
                for key in [k for k in held if k[0] == url]:
                    del held[key]
                if not held:
                    del shelf[issuer]

    def status(
        self,
        issuer: bytes,
        serial: int,
        cert: Callable[[], CertScope] | None = None,
        trusted: Collection[tuple[bytes, int]] | None = None,
    ) -> CrlVerdict:
        """REVOKED, GOOD, or why it cannot be decided: 'expired' (the covering CRLs are
        past nextUpdate + grace), 'incomplete' (the covering CRLs do not speak for every
        reason) or 'missing' (no CRL covers it). ``cert`` gives the certificate's scope,
        asked for only when a CRL of the issuer has an issuing distribution point; without
        it (the live sweep), a serial listed in any CRL of the issuer counts as revoked.
        ``trusted``: the (issuer, serial) of the chain's certificates checked already; a CRL
        whose signer path holds another certificate is used only while that one is good
        (a CRL-signing certificate revoked by its issuer's CRL voids the CRLs it signed).
        None skips this (the sweep only asks whether a serial is listed)."""
        candidates = self._candidates(issuer)
        if not candidates:
            return CrlVerdict.MISSING
        now = self._clock.seconds()
        covered: frozenset[str] = frozenset()
        expired = False
        scope_of_cert: CertScope | None = None
        for crl, index, direct in candidates:
            scope = crl.info.scope
            if scope.complete:
                reasons = ALL_REASONS
            elif cert is None:
                reasons = frozenset() if scope.only_attribute else ALL_REASONS
            else:
                if scope_of_cert is None:
                    scope_of_cert = cert()
                reasons = covered_reasons(scope, scope_of_cert, direct, issuer_key(crl.info.issuer))
            if not reasons:
                continue
            if trusted is not None and not self._signer_good(crl.info, trusted):
                continue
            delta = self._delta_for(crl.info, now, trusted) if direct else None
            if delta is not None and delta.removed is not None and serial in delta.removed:
                pass  # released from hold since the base: the delta says not revoked
            elif serial in index or (delta is not None and serial in delta.index):
                return CrlVerdict.REVOKED
            if crl.info.expired(now, self.grace):
                expired = True
            else:
                covered |= reasons
        if covered >= ALL_REASONS:
            return CrlVerdict.GOOD
        if expired:
            return CrlVerdict.EXPIRED
        return CrlVerdict.INCOMPLETE if covered else CrlVerdict.MISSING

    def _candidates(self, issuer: bytes) -> list[tuple[LoadedCrl, SerialIndex, bool]]:
        """The CRLs that may speak for certificates of ``issuer``, each with the index of
        its entries for that issuer and whether it is direct: the issuer's own complete
        CRLs, and every indirect CRL (its section for the issuer, maybe empty; whether it
        covers a certificate is up to the certificate's cRLIssuer)."""
        out = [(crl, crl.index, True) for crl in self._by_issuer.get(issuer, {}).values()]
        for crl_issuer, held in self._indirect.items():
            for crl in held.values():
                if crl_issuer == issuer:
                    out.append((crl, crl.index, True))
                else:
                    out.append((crl, (crl.sections or {}).get(issuer, _NO_ENTRIES), False))
        return out

    def _delta_for(
        self, base: CrlInfo, now: float, trusted: Collection[tuple[bytes, int]] | None
    ) -> LoadedCrl | None:
        """The newest current delta CRL that completes ``base``: same issuer and scope, its
        base number at most the base's number, its own number above it (RFC 5280 §5.2.4).
        A delta is never used without its base."""
        if base.number is None:
            return None
        best = None
        scope = base.scope.key()
        for (_, key), delta in self._deltas.get(base.issuer, {}).items():
            info = delta.info
            if (
                key != scope
                or info.delta_base is None
                or info.number is None
                or not info.delta_base <= base.number < info.number
                or info.expired(now, self.grace)
                or (trusted is not None and not self._signer_good(info, trusted))
            ):
                continue
            if best is None or info.number > (best.info.number or 0):
                best = delta
        return best

    def _signer_good(self, info: CrlInfo, trusted: Collection[tuple[bytes, int]]) -> bool:
        return all(
            entry in trusted or self.status(*entry) is CrlVerdict.GOOD for entry in info.signer
        )

    def expired_crls(self) -> list[CrlInfo]:
        now = self._clock.seconds()
        return [
            c.info
            for shelf in (self._by_issuer, self._indirect)  # an expired delta: not applied
            for held in shelf.values()
            for c in held.values()
            if c.info.expired(now, self.grace)
        ]
