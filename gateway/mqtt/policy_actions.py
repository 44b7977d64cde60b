"""The vocabulary of the policy edge (``mqtt.policy``): what its core returns for the
adapter to carry out, and who the device is to its rules (pure, frozen records)."""

from __future__ import annotations

import enum

import attrs

from gateway.mqtt.properties import Property, encode_properties
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
    """The device as the rules see it: the certificate's identity, its client id, and the
    tenant its server name (or CA) chose (whose acl_file, if it has one, applies)."""

    username: str
    client_id: str
    tenant: str | None = None


# The MQTT 5 DISCONNECT reason code of each way the gateway ends a relayed session.
DISCONNECT_REASONS: dict[Reason, int] = {
    Reason.REVOKED: 0x87,  # not authorized: its certificate was revoked
    Reason.DENY_LISTED: 0x87,  # not authorized: a reload's deny_file names its certificate
    Reason.TENANT_DISABLED: 0x98,  # administrative action: its tenant disabled or removed
    Reason.ACL_DENIED: 0x87,  # not authorized: acl_deny_action = disconnect
    Reason.SHUTDOWN: 0x8B,  # server shutting down
    Reason.RELOAD: 0x98,  # administrative action: a reload removed the listener
    Reason.BAD_PACKET: 0x81,  # malformed packet (over max_packet_size: 0x95, below)
    Reason.MESSAGE_RATE: 0x96,  # message rate too high
}
PACKET_TOO_LARGE = 0x95
USE_ANOTHER_SERVER = 0x9C


def closing_reason(by: Reason, server_reference: str | None = None) -> tuple[int, bytes] | None:
    """(reason code, encoded properties) of the MQTT 5 DISCONNECT that tells a device why
    the gateway ends its session (None: no reason to tell): a drain toward another server
    (``drain_server_reference``) is 0x9C with its Server Reference."""
    if by is Reason.SHUTDOWN and server_reference:
        reference = encode_properties([(Property.SERVER_REFERENCE, server_reference)])
        return USE_ANOTHER_SERVER, reference
    code = DISCONNECT_REASONS.get(by)
    return None if code is None else (code, b"\x00")
