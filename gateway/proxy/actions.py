"""The vocabulary of a connection's state machine (sans-IO): its states, its one timer, and
the actions it asks its adapter to carry out. ``gateway.proxy.session`` decides; these
are the words it decides in."""

from __future__ import annotations

import enum

import attrs

from gateway.peer import Pending
from gateway.reasons import Reason, Side


class Timer(enum.Enum):
    """What the connection's one timer bounds (its ``refusal`` when it fires)."""

    HANDSHAKE = "handshake"
    CONNECT = "connect"

    @property
    def refusal(self) -> Reason:
        return _TIMEOUTS[self]


_TIMEOUTS = {Timer.HANDSHAKE: Reason.HANDSHAKE_TIMEOUT, Timer.CONNECT: Reason.CONNECT_TIMEOUT}


class State(enum.Enum):
    HANDSHAKE = "handshake"  # TLS in progress, bounded by handshake_timeout
    CONNECT = "connect"  # reading the client's CONNECT, bounded by connect_timeout
    REVOCATION_HOLD = "revocation_hold"  # CONNECT held: the leaf's CRL fetched, OCSP asked
    AUTH_HOLD = "auth_hold"  # CONNECT held: the authorization hook (auth_http_url) asked
    UPSTREAM = "upstream"  # CONNECT valid; the broker connection is opening
    RELAY = "relay"  # bytes flow untouched both ways
    CLOSING = "closing"  # the gateway is closing the connection
    CLOSED = "closed"


# -- actions -----------------------------------------------------------------------------


@attrs.frozen
class StartTimer:
    """(Re)start the connection's one timer; on expiry call ``timer_fired(what)``."""

    seconds: float
    what: Timer


@attrs.frozen
class CancelTimer:
    pass


@attrs.frozen
class Refuse:
    """Count and log why this connection is turned away (emitted once per connection)."""

    reason: Reason
    detail: str


@attrs.frozen
class PauseClient:
    """Stop reading from the client until the relay starts."""


@attrs.frozen
class OpenUpstream:
    """Open the broker connection; report ``upstream_connected`` / ``upstream_failed``."""


@attrs.frozen
class CancelUpstream:
    """Abandon a broker connection attempt still in progress."""


@attrs.frozen
class AskAuthorization:
    """Ask the authorization hook about the CONNECT; report ``authorization_decided``
    (always, also on its timeout or failure)."""


@attrs.frozen
class HoldForRevocation:
    """Wait for what revocation checking still needs (the leaf's CRL fetched, the OCSP
    responder's answer); report ``revocation_decided`` (always, also on timeout)."""

    pending: Pending


@attrs.frozen
class StartRelay:
    """Write ``first`` (the CONNECT and what followed it) to the broker, register producers
    both ways, resume the client, record the session as live and accepted."""

    first: bytes


@attrs.frozen
class SendToClient:
    data: bytes


@attrs.frozen
class SendToUpstream:
    data: bytes


@attrs.frozen
class CloseClient:
    """Close the client connection after what was written to it (TLS close_notify)."""

    abort: bool = False  # drop at once, without flushing (timeouts)


@attrs.frozen
class CloseUpstream:
    """Close the broker connection (``unhook``: the relay's flow control first)."""

    unhook: bool = True


@attrs.frozen
class RevokedLive:
    """A live session's certificate was revoked (a CRL update, an OCSP answer): count and log it."""


@attrs.frozen
class SessionEnded:
    """A relayed session ended: log it (the session log), with who ended it (``by``:
    client, broker, or the gateway's reason: revoked, shutdown, reload, ...) and ``why``."""

    by: Reason | Side
    why: str


Action = (
    StartTimer
    | CancelTimer
    | Refuse
    | PauseClient
    | OpenUpstream
    | CancelUpstream
    | HoldForRevocation
    | AskAuthorization
    | StartRelay
    | SendToClient
    | SendToUpstream
    | CloseClient
    | CloseUpstream
    | RevokedLive
    | SessionEnded
)
