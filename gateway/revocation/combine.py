"""How the CRL and OCSP verdicts on one certificate make one decision (sans-IO, pure).

``crl``: None when CRL checking is off, else a ``CrlVerdict`` (``PENDING``: the leaf's
distribution point is being fetched). ``ocsp``: None when OCSP does not check this
certificate, else an ``OcspVerdict`` (``UNAVAILABLE``: no valid answer could be had;
``PENDING``: being asked).

- Revoked by either check: refused, whatever the mode.
- ``either``: a certificate one check finds good is admitted although the other cannot
  decide (or is still waiting).
- Otherwise each check that cannot decide follows its own policy (reject refuses, accept
  counts and admits); a check still waiting holds the device.
"""

from __future__ import annotations

import attrs

from gateway.reasons import CrlVerdict, OcspVerdict, Outcome, Reason

_OCSP_REASONS = {
    OcspVerdict.UNKNOWN: Reason.OCSP_UNKNOWN,
    OcspVerdict.UNAVAILABLE: Reason.OCSP_UNAVAILABLE,
}


@attrs.frozen
class Decision:
    """What to do (``reason``: why it is refused); ``accepted``: the count keys of
    undecided checks a policy of accept let through."""

    outcome: Outcome
    reason: Reason | None = None
    accepted: tuple[str, ...] = ()


ACCEPT = Decision(Outcome.ACCEPT)
HOLD = Decision(Outcome.HOLD)


def combine(
    crl: CrlVerdict | None,
    ocsp: OcspVerdict | None,
    either: bool,
    crl_reject: bool,
    ocsp_reject: bool,
) -> Decision:
    if crl is CrlVerdict.REVOKED:
        return Decision(Outcome.REFUSE, Reason.REVOKED)
    if ocsp is OcspVerdict.REVOKED:
        return Decision(Outcome.REFUSE, Reason.OCSP_REVOKED)
    if either and (crl is CrlVerdict.GOOD or ocsp is OcspVerdict.GOOD):
        return ACCEPT
    if crl is CrlVerdict.PENDING or ocsp is OcspVerdict.PENDING:
        return HOLD
    accepted: list[str] = []
    if crl is not None and crl is not CrlVerdict.GOOD:
        reason = crl.refusal
        if crl_reject:
            return Decision(Outcome.REFUSE, reason)
        accepted.append(reason.value)
    if ocsp is not None and ocsp is not OcspVerdict.GOOD:
        reason = _OCSP_REASONS[ocsp]
        if ocsp_reject:
            return Decision(Outcome.REFUSE, reason)
        accepted.append(reason.value)
    return Decision(Outcome.ACCEPT, accepted=tuple(accepted))
