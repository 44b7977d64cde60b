"""One CRL source as the service keeps it (its state for operators, its refresh job, whether
it can decide devices yet) and what a fetch came to."""

from __future__ import annotations

import attrs
from twisted.internet import defer

from gateway.reasons import FetchResult
from gateway.revocation.crl import CrlInfo, LoadedCrl, loaded_blobs
from gateway.revocation.refresh import RefreshJob
from gateway.status import CrlSourceStatus, CrlStatus


def same_indexes(a: list[LoadedCrl], b: list[LoadedCrl]) -> bool:
    """Whether two loads of a body hold the same CRLs with the same entries."""
    if len(a) != len(b) or any(x.info != y.info for x, y in zip(a, b, strict=True)):
        return False
    for x, y in zip(a, b, strict=True):
        blobs_x, blobs_y = loaded_blobs(x), loaded_blobs(y)
        if len(blobs_x) != len(blobs_y):
            return False
        if any(bx != by for bx, by in zip(blobs_x, blobs_y, strict=True)):
            return False
    return True


@attrs.define
class CrlSourceState:
    """What an operator wants to know about one CRL source (beyond its schedule)."""

    url: str
    discovered: bool = False
    last_fetch: float | None = None
    last_result: FetchResult | None = None
    last_error: str | None = None
    size: int | None = None
    crls: tuple[CrlInfo, ...] = ()  # one per issuer in the body
    last_success: float | None = None  # a fetch that gave a valid CRL (new or unchanged)
    last_failure: float | None = None
    failure_kinds: dict[str, int] = attrs.Factory(dict)  # since start, by error kind


@attrs.define(eq=False)
class Source:
    state: CrlSourceState
    job: RefreshJob
    restored: bool = False  # the persisted copy was tried (first run only)
    from_index: list[LoadedCrl] | None = None  # restored from the kept index, not verified
    # Fires once the source can decide devices: its persisted copy is in force (the
    # fetch that follows may replace it), or its first fetch is over (whatever came).
    usable: defer.Deferred[None] = attrs.Factory(defer.Deferred)

    def mark_usable(self) -> None:
        if not self.usable.called:
            self.usable.callback(None)

    def status(self) -> CrlSourceStatus:
        s = self.state
        return CrlSourceStatus(
            url=s.url,
            discovered=s.discovered,
            last_fetch=s.last_fetch,
            last_result=s.last_result,
            last_error=s.last_error,
            failures=self.job.failures,
            next_refresh=self.job.next_refresh,
            size=s.size,
            last_success=s.last_success,
            last_failure=s.last_failure,
            failure_kinds=dict(s.failure_kinds),
            crls=tuple(
                CrlStatus(c.issuer_text, c.number, c.this_update, c.next_update, c.count)
                for c in s.crls
            ),
        )
