"""The vocabulary of the policy edge (``mqtt.policy``): what its core returns for the
adapter to carry out, and who the device is to its rules (pure, frozen records)."""

from __future__ import annotations

import enum

import attrs

from gateway.reasons import Reason


class Pass(enum.Enum):
    PASS = "PASS"


PASS = Pass.PASS  # the bytes go on as they came: nothing else to do


@attrs.frozen
class Forward:
    """Bytes to the broker."""

    data: bytes | memoryview


@attrs.frozen
class ToDevice:
    """Bytes to the device: the broker's, or a packet of the gateway's own."""

    data: bytes | memoryview


@attrs.frozen
class WaitUntil:
    """Read nothing more from the device until ``at``, then call ``release``."""

    at: float
    seconds: float  # how long that is from now (counted as time throttled)


@attrs.frozen
class ResumeDevice:
    """Nothing is held any more: the device may be read from again (unless the broker's
    flow control says otherwise)."""


@attrs.frozen
class End:
    """The session is to end: the gateway refuses it with ``reason``."""

    reason: Reason
    detail: str


@attrs.frozen
class Denied:
    """A PUBLISH or SUBSCRIBE the rules denied (``rule``: the acl_file line that decided)."""

    what: str  # publish | subscribe
    topic: str
    rule: str


@attrs.frozen
class Told:
    """An MQTT 5 DISCONNECT with this reason code was sent to the device."""

    code: int


Action = Forward | ToDevice | WaitUntil | ResumeDevice | End | Denied | Told
Actions = list[Action]


@attrs.frozen
class Who:
    """The device as the rules see it: the certificate's identity and its client id."""

    username: str
    client_id: str
