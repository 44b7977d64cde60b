"""A client connection's life as a sans-IO state machine.

Events go in as method calls (handshake done, bytes, a timer fired, the broker connected or
failed, a CRL verdict, the connection lost); each returns the actions the adapter must
carry out, in order (start a timer, refuse, send a CONNACK, open the broker connection,
close). Nothing here imports Twisted or does I/O: ``gateway.proxy.relay`` is the adapter,
and whole conversations are tested as scripts of events (tests/unit/test_session.py).

The transitions (generated from ``TRANSITIONS``, where every event is listed with the
states it may come in; an event elsewhere is a ``SessionStateError``; events that change
nothing in a state, such as a late broker connection after the client left, are listed
there too but not below):

    HANDSHAKE --handshake_done--> CONNECT | CLOSING
    HANDSHAKE --timer_fired--> CLOSING
    HANDSHAKE --stop--> CLOSING
    HANDSHAKE --connection_lost--> CLOSED
    CONNECT --receive--> REVOCATION_HOLD | AUTH_HOLD | UPSTREAM | CLOSING
    CONNECT --timer_fired--> CLOSING
    CONNECT --stop--> CLOSING
    CONNECT --connection_lost--> CLOSED
    REVOCATION_HOLD --receive--> CLOSING
    REVOCATION_HOLD --timer_fired--> CLOSING
    REVOCATION_HOLD --revocation_decided--> AUTH_HOLD | UPSTREAM | CLOSING
    REVOCATION_HOLD --stop--> CLOSING
    REVOCATION_HOLD --connection_lost--> CLOSED
    AUTH_HOLD --receive--> CLOSING
    AUTH_HOLD --timer_fired--> CLOSING
    AUTH_HOLD --authorization_decided--> UPSTREAM | CLOSING
    AUTH_HOLD --stop--> CLOSING
    AUTH_HOLD --connection_lost--> CLOSED
    UPSTREAM --receive--> CLOSING
    UPSTREAM --timer_fired--> CLOSING
    UPSTREAM --upstream_connected--> RELAY
    UPSTREAM --upstream_failed--> CLOSING
    UPSTREAM --stop--> CLOSING
    UPSTREAM --connection_lost--> CLOSED
    RELAY --timer_fired--> CLOSING
    RELAY --upstream_lost--> CLOSING
    RELAY --revoked--> CLOSING
    RELAY --stop--> CLOSING
    RELAY --connection_lost--> CLOSED
    CLOSING --connection_lost--> CLOSED

Invariant: nothing reaches the broker before the client certificate has been verified and a
complete, valid CONNECT has arrived (OpenUpstream is emitted only from CONNECT, REVOCATION_HOLD
or AUTH_HOLD), and, with auth_http_url, the hook has allowed it (or its failure policy has).
"""

from __future__ import annotations

import attrs

from gateway import mqtt
from gateway.peer import Pending
from gateway.proxy.actions import (
    Action,
    AskAuthorization,
    CancelTimer,
    CancelUpstream,
    CloseClient,
    CloseUpstream,
    HoldForRevocation,
    OpenUpstream,
    PauseClient,
    Refuse,
    RevokedLive,
    SendToClient,
    SendToUpstream,
    SessionEnded,
    StartRelay,
    StartTimer,
    State,
    Timer,
)
from gateway.proxy.transitions import TRANSITIONS, SessionStateError, checked, transitions_text
from gateway.reasons import Reason, Side


@attrs.frozen
class SessionLimits:
    handshake_timeout: float
    connect_timeout: float
    max_packet_size: int
    authorize: bool = False  # auth_http_url: the hook is asked about each CONNECT


# -- the machine ---------------------------------------------------------------------------


class Session:
    """One client connection's state and the rules between states."""

    __slots__ = (
        "_limits",
        "_pending",
        "_pending_crl",
        "_pending_size",
        "_reader",
        "connect",
        "ended_by",
        "refusal",
        "state",
        "upstream_attempt",
        "upstream_open",
    )

    def __init__(self, limits: SessionLimits) -> None:
        self._limits = limits
        self.state = State.HANDSHAKE
        self.connect: mqtt.Connect | None = None
        self.refusal: Reason | None = None  # once refused
        self.ended_by: tuple[Reason | Side, str] | None = None  # who ended it, and why
        self.upstream_attempt = False  # a broker connection attempt is in progress
        self.upstream_open = False  # the broker connection is open
        self._reader: mqtt.ConnectReader | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._pending_crl: Pending | None = None

    # -- events ------------------------------------------------------------------------

    @checked
    def start(self) -> list[Action]:
        """The TCP connection was accepted; the TLS handshake begins."""
        return [StartTimer(self._limits.handshake_timeout, Timer.HANDSHAKE)]

    @checked
    def handshake_done(
        self, pending_crl: Pending | None = None, refusal: tuple[Reason, str] | None = None
    ) -> list[Action]:
        """The handshake completed; ``pending_crl`` if the leaf's CRL is still to be fetched;
        ``refusal`` (reason, detail) if a check after the handshake refused the client (a
        resumed session, which OpenSSL does not verify)."""
        if self.state is not State.HANDSHAKE:
            return []
        if refusal is not None:
            return [CancelTimer(), *self._refuse_and_close(*refusal)]
        self.state = State.CONNECT
        self._pending_crl = pending_crl
        self._reader = mqtt.ConnectReader(self._limits.max_packet_size)
        return [StartTimer(self._limits.connect_timeout, Timer.CONNECT)]

    @checked
    def receive(self, data: bytes) -> list[Action]:
        """Bytes from the client (decrypted)."""
        state = self.state
        if state is State.RELAY:
            return [SendToUpstream(data)]
        if state is State.CONNECT:
            return self._read_connect(data)
        if state in (State.UPSTREAM, State.REVOCATION_HOLD, State.AUTH_HOLD):
            # The TLS layer may deliver records decrypted from the same read after a pause.
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size > self._limits.max_packet_size:
                return self._refuse_and_close(
                    Reason.BAD_CONNECT, "too much data before the broker connection opened"
                )
        return []

    @checked
    def timer_fired(self, what: Timer) -> list[Action]:
        if self.state in (State.CLOSING, State.CLOSED):
            return []
        self.state = State.CLOSING
        return [
            *self._refuse(what.refusal, f"no {what.value} within the time allowed"),
            CloseClient(abort=True),
        ]

    @checked
    def revocation_decided(self, refusal: Reason | None, detail: str) -> list[Action]:
        """The held client's CRL was fetched (or the wait timed out): None admits it."""
        if self.state is not State.REVOCATION_HOLD:
            return []
        if refusal is None:
            return self._after_checks()
        return [*self._refuse(refusal, detail), *self._connack(mqtt.NOT_AUTHORIZED)]

    @checked
    def authorization_decided(self, refusal: Reason | None, detail: str) -> list[Action]:
        """The hook answered (or the failure policy did, on its failure): None admits."""
        if self.state is not State.AUTH_HOLD:
            return []
        if refusal is None:
            return self._open_upstream()
        return [*self._refuse(refusal, detail), *self._connack(mqtt.NOT_AUTHORIZED)]

    @checked
    def upstream_connected(self) -> list[Action]:
        self.upstream_attempt = False
        self.upstream_open = True
        if self.state is not State.UPSTREAM:  # the client went away meanwhile
            self.upstream_open = False
            return [CloseUpstream(unhook=False)]
        self.state = State.RELAY
        first = b"".join(self._pending)
        self._pending = []
        self._pending_size = 0
        return [StartRelay(first)]

    @checked
    def upstream_failed(self, detail: str) -> list[Action]:
        self.upstream_attempt = False
        if self.state is not State.UPSTREAM:
            return []
        return [
            *self._refuse(Reason.UPSTREAM_UNAVAILABLE, detail),
            *self._connack(mqtt.SERVER_UNAVAILABLE),
        ]

    @checked
    def upstream_lost(self, half: bool = False, why: str = "") -> list[Action]:
        """The broker closed (``half``: only its sending side; ``why``: how, for the log):
        flush what it sent to the client and close. The session's end is logged once the
        client connection is gone, as closed by the broker."""
        if not half:
            self.upstream_open = False
        if self.state is not State.RELAY:
            return []
        self.state = State.CLOSING
        self.ended_by = (Side.BROKER, why or "closed")
        return [CloseClient()]

    @checked
    def revoked(
        self, by: Reason = Reason.REVOKED, why: str = "certificate revoked by a revocation update"
    ) -> list[Action]:
        """A CRL or OCSP update revoked this live session's certificate (or a reload's
        deny_file names it, ``by`` DENY_LISTED): both sides are closed (the adapter's policy
        edge, where there is one, tells an MQTT 5 device why first)."""
        if self.state is not State.RELAY:
            return []
        self.state = State.CLOSING
        self.upstream_open = False
        self.ended_by = (by, why)
        first: list[Action] = [RevokedLive()] if by is Reason.REVOKED else []
        return [*first, CloseUpstream(), CloseClient()]

    @checked
    def stop(self, by: Reason, why: str) -> list[Action]:
        """The gateway ends this connection (``by``: shutdown, or reload when its listener
        was removed and the drain time is over). A relayed session is closed on both sides
        and logged as ended by the gateway; an earlier one is refused with reason ``by``."""
        if self.state in (State.CLOSING, State.CLOSED):
            return []
        if self.state is State.RELAY:
            self.state = State.CLOSING
            self.upstream_open = False
            self.ended_by = (by, why)
            return [CloseUpstream(), CloseClient()]
        actions: list[Action] = [CancelTimer()]
        if self.upstream_attempt:
            self.upstream_attempt = False
            actions.append(CancelUpstream())
        return actions + self._refuse_and_close(by, why)

    @checked
    def connection_lost(
        self, why: str, handshake_refusal: tuple[Reason, str] | None = None
    ) -> list[Action]:
        """The client connection is gone. ``handshake_refusal``: (reason, detail) of a
        handshake that failed, for the log."""
        state, self.state = self.state, State.CLOSED
        actions: list[Action] = [CancelTimer()]
        if state is State.HANDSHAKE and handshake_refusal is not None:
            actions += self._refuse(*handshake_refusal)
        elif state is State.CONNECT:
            actions += self._refuse(Reason.BAD_CONNECT, "closed before a complete CONNECT")
        if self.upstream_attempt:
            self.upstream_attempt = False
            actions.append(CancelUpstream())
        if self.upstream_open:
            self.upstream_open = False
            actions.append(CloseUpstream())
        if state is State.RELAY:
            actions.append(SessionEnded(Side.CLIENT, why))
        elif state is State.CLOSING and self.ended_by is not None:
            actions.append(SessionEnded(*self.ended_by))
        return actions

    # -- helpers -------------------------------------------------------------------------

    def _refuse(self, reason: Reason, detail: str) -> list[Action]:
        if self.refusal is not None:
            return []
        self.refusal = reason
        return [Refuse(reason, detail)]

    def _refuse_and_close(self, reason: Reason, detail: str) -> list[Action]:
        self.state = State.CLOSING
        return [*self._refuse(reason, detail), CloseClient()]

    def _connack(self, code: tuple[int, int]) -> list[Action]:
        """Answer the held CONNECT with a refusing CONNACK in its dialect, then close."""
        assert self.connect is not None
        self.state = State.CLOSING
        return [SendToClient(mqtt.connack(self.connect.protocol_level, code)), CloseClient()]

    def _open_upstream(self) -> list[Action]:
        self.state = State.UPSTREAM
        self.upstream_attempt = True
        return [OpenUpstream()]

    def _read_connect(self, data: bytes) -> list[Action]:
        reader = self._reader
        assert reader is not None
        try:
            reader.receive_data(data)
            event = reader.next_event()
        except mqtt.RemoteProtocolError as e:
            return [
                CancelTimer(),
                *self._refuse_and_close(Reason.BAD_CONNECT, f"{e.kind}: {e.detail}"),
            ]
        if event is mqtt.NEED_DATA:
            return []
        assert isinstance(event, mqtt.Connect)
        self.connect = event
        trailing = reader.trailing_data
        self._pending = [event.packet, trailing] if trailing else [event.packet]
        self._pending_size = len(trailing)
        self._reader = None
        actions: list[Action] = [CancelTimer(), PauseClient()]
        if self._pending_crl is not None:
            self.state = State.REVOCATION_HOLD
            return [*actions, HoldForRevocation(self._pending_crl)]
        return [*actions, *self._after_checks()]

    def _after_checks(self) -> list[Action]:
        """The certificate is settled: the hook next, where there is one, then the broker."""
        if self._limits.authorize:
            self.state = State.AUTH_HOLD
            return [AskAuthorization()]
        return self._open_upstream()


# The actions and states are part of this module's vocabulary (the adapter says S.StartTimer).
__all__ = [
    "Action",
    "CancelTimer",
    "CancelUpstream",
    "CloseClient",
    "CloseUpstream",
    "AskAuthorization",
    "HoldForRevocation",
    "OpenUpstream",
    "PauseClient",
    "Refuse",
    "RevokedLive",
    "SendToClient",
    "SendToUpstream",
    "Session",
    "SessionEnded",
    "SessionLimits",
    "SessionStateError",
    "StartRelay",
    "StartTimer",
    "State",
    "TRANSITIONS",
    "Timer",
    "transitions_text",
]
