"""How the CRL and OCSP verdicts on one certificate make one decision (sans-IO, pure).

``crl``: None when CRL checking is off, else a ``CrlVerdict`` or ``PENDING`` (the leaf's
distribution point is being fetched). ``ocsp``: None when OCSP does not check this
certificate, else one of ``OCSP_GOOD``, ``OCSP_REVOKED``, ``OCSP_UNKNOWN``,
``OCSP_UNAVAILABLE`` (no valid answer could be had) or ``PENDING`` (being asked).

- Revoked by either check: refused, whatever the mode.
- ``either``: a certificate one check finds good is admitted although the other cannot
  decide (or is still waiting).
- Otherwise each check that cannot decide follows its own policy (reject refuses, accept
  counts and admits); a check still waiting holds the device.
"""

from __future__ import annotations

import attrs

from gateway.reasons import CrlVerdict, Reason

PENDING = "pending"
OCSP_GOOD = "good"
OCSP_REVOKED = "revoked"
OCSP_UNKNOWN = "unknown"
OCSP_UNAVAILABLE = "unavailable"

_OCSP_REASONS = {OCSP_UNKNOWN: Reason.OCSP_UNKNOWN, OCSP_UNAVAILABLE: Reason.OCSP_UNAVAILABLE}


@attrs.frozen
class Decision:
    """``accept``, ``refuse`` (with ``reason``) or ``hold``; ``accepted``: the count keys of
    undecided checks a policy of accept let through."""

    action: str
    reason: Reason | None = None
    accepted: tuple[str, ...] = ()


ACCEPT = Decision("accept")
HOLD = Decision("hold")


def combine(
    crl: CrlVerdict | str | None,
    ocsp: str | None,
    either: bool,
    crl_reject: bool,
    ocsp_reject: bool,
) -> Decision:
    if crl is CrlVerdict.REVOKED:
        return Decision("refuse", Reason.REVOKED)
    if ocsp == OCSP_REVOKED:
        return Decision("refuse", Reason.OCSP_REVOKED)
    if either and (crl is CrlVerdict.GOOD or ocsp == OCSP_GOOD):
        return ACCEPT
    if PENDING in (crl, ocsp):
        return HOLD
    accepted: list[str] = []
    if crl is not None and crl is not CrlVerdict.GOOD:
        reason = CrlVerdict(crl).refusal
        if crl_reject:
            return Decision("refuse", reason)
        accepted.append(reason.value)
    if ocsp is not None and ocsp != OCSP_GOOD:
        reason = _OCSP_REASONS[ocsp]
        if ocsp_reject:
            return Decision("refuse", reason)
        accepted.append(reason.value)
    return Decision("accept", accepted=tuple(accepted))
