"""The connection state machine, tested as scripts of events and the actions they produce
(no sockets, no reactor), in the manner of mitmproxy's layer tests."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import mqtt
from gateway.peer import PendingCrl
from gateway.proxy import session as S
from gateway.reasons import Reason
from gateway.testing import connect_packet

LIMITS = S.SessionLimits(handshake_timeout=15, connect_timeout=10, max_packet_size=1024)
PENDING = PendingCrl("http://ca.test/dp.crl", b"issuer", 7)


def play(script: list[tuple[str, tuple[Any, ...], list[S.Action]]]) -> S.Session:
    """Run (event, arguments, expected actions) steps against a new session."""
    session = S.Session(LIMITS)
    for number, (event, args, expected) in enumerate(script):
        actions = getattr(session, event)(*args)
        assert actions == expected, f"step {number} ({event}): {actions!r}"
    return session


def test_happy_path_to_relay() -> None:
    """Handshake, CONNECT, broker connected: relay starts with the CONNECT and what followed;
    nothing is asked of the broker before the CONNECT is complete."""
    connect = connect_packet("dev")
    session = play(
        [
            ("start", (), [S.StartTimer(15, S.Timer.HANDSHAKE)]),
            ("handshake_done", (), [S.StartTimer(10, S.Timer.CONNECT)]),
            ("receive", (connect[:3],), []),
            (
                "receive",
                (connect[3:] + b"\xc0\x00",),
                [S.CancelTimer(), S.PauseClient(), S.OpenUpstream()],
            ),
            ("receive", (b"\xc0\x00",), []),  # buffered while the broker connection opens
            ("upstream_connected", (), [S.StartRelay(connect + b"\xc0\x00\xc0\x00")]),
            ("receive", (b"\x30\x00",), [S.SendToUpstream(b"\x30\x00")]),
            ("upstream_lost", (), [S.CloseClient()]),
            (
                "connection_lost",
                ("done",),
                [S.CancelTimer(), S.SessionEnded("broker", "closed")],
            ),
        ]
    )
    assert session.state is S.State.CLOSED and session.refusal is None
    assert session.connect is not None and session.connect.client_id == "dev"


def test_connect_byte_by_byte() -> None:
    """A CONNECT arriving one byte at a time is assembled before anything else happens."""
    session = play(
        [
            ("start", (), [S.StartTimer(15, S.Timer.HANDSHAKE)]),
            ("handshake_done", (), [S.StartTimer(10, S.Timer.CONNECT)]),
        ]
    )
    packet = connect_packet("slow")
    for byte in packet[:-1]:
        assert session.receive(bytes([byte])) == []
    assert session.receive(packet[-1:]) == [S.CancelTimer(), S.PauseClient(), S.OpenUpstream()]


def test_bad_connect_is_refused_and_closed() -> None:
    """Anything but a valid CONNECT refuses the connection once, with the codec's reason."""
    # The codec's exact wording is its own test's business: check the shape here.
    session = S.Session(LIMITS)
    session.start()
    session.handshake_done()
    actions = session.receive(b"GET / HTTP/1.1\r\n\r\n")
    assert actions[0] == S.CancelTimer() and actions[-1] == S.CloseClient()
    refusal = actions[1]
    assert isinstance(refusal, S.Refuse) and refusal.reason == "bad_connect"
    assert session.state is S.State.CLOSING
    assert session.connection_lost("gone") == [S.CancelTimer()]  # no second refusal


@pytest.mark.parametrize("what, seconds", [("handshake", 15), ("connect", 10)])
def test_timeouts_abort(what: str, seconds: float) -> None:
    """A stalled handshake or CONNECT is refused with its timeout reason and aborted."""
    session = S.Session(LIMITS)
    assert session.start() == [S.StartTimer(15, S.Timer.HANDSHAKE)]
    if what == "connect":
        assert session.handshake_done() == [S.StartTimer(10, S.Timer.CONNECT)]
    assert session.timer_fired(S.Timer(what)) == [
        S.Refuse(f"{what}_timeout", f"no {what} within the time allowed"),
        S.CloseClient(abort=True),
    ]
    assert session.connection_lost("aborted", ("tls_error", "x")) == [S.CancelTimer()]


def test_handshake_failure_is_refused_with_its_reason() -> None:
    """A connection lost during the handshake is refused with the reason the adapter found."""
    session = S.Session(LIMITS)
    session.start()
    assert session.connection_lost("lost", ("revoked", "certificate revoked")) == [
        S.CancelTimer(),
        S.Refuse("revoked", "certificate revoked"),
    ]


@pytest.mark.parametrize("level, connack", [(4, b"\x20\x02\x00\x03"), (5, b"\x20\x03\x00\x88\x00")])
def test_broker_unavailable_gets_connack(level: int, connack: bytes) -> None:
    """A failed broker connection answers the CONNECT in its own dialect, then closes."""
    session = S.Session(LIMITS)
    session.start()
    session.handshake_done()
    session.receive(connect_packet("x", level=level))
    assert session.upstream_failed("127.0.0.1:1883: refused") == [
        S.Refuse("upstream_unavailable", "127.0.0.1:1883: refused"),
        S.SendToClient(connack),
        S.CloseClient(),
    ]
    assert session.upstream_connected() == [S.CloseUpstream(unhook=False)]  # too late


def test_client_gone_while_broker_connects() -> None:
    """A client leaving while the broker connection opens cancels the attempt; a late success
    is closed at once."""
    session = S.Session(LIMITS)
    session.start()
    session.handshake_done()
    session.receive(connect_packet("leaver"))
    assert session.connection_lost("gone") == [S.CancelTimer(), S.CancelUpstream()]
    assert session.upstream_connected() == [S.CloseUpstream(unhook=False)]


def test_crl_hold_admits_or_refuses() -> None:
    """With the leaf's CRL still to fetch, the CONNECT is held; the verdict opens the broker
    connection or answers CONNACK 'not authorized'."""
    for refusal, expected in [
        (None, [S.OpenUpstream()]),
        (
            "revoked",
            [
                S.Refuse("revoked", "after fetching"),
                S.SendToClient(mqtt.connack(4, mqtt.NOT_AUTHORIZED)),
                S.CloseClient(),
            ],
        ),
    ]:
        session = S.Session(LIMITS)
        session.start()
        session.handshake_done(PENDING)
        assert session.receive(connect_packet("held")) == [
            S.CancelTimer(),
            S.PauseClient(),
            S.HoldForRevocation(PENDING),
        ]
        assert session.state is S.State.REVOCATION_HOLD
        assert session.revocation_decided(refusal, "after fetching") == expected
        assert session.revocation_decided(None, "twice") == []  # only the first verdict counts


def test_too_much_data_before_relay() -> None:
    """More than max_packet_size buffered before the broker answers is refused."""
    session = S.Session(LIMITS)
    session.start()
    session.handshake_done()
    session.receive(connect_packet("greedy"))
    assert session.receive(b"x" * 1000) == []
    assert session.receive(b"x" * 100) == [
        S.Refuse("bad_connect", "too much data before the broker connection opened"),
        S.CloseClient(),
    ]
    assert session.connection_lost("gone") == [S.CancelTimer(), S.CancelUpstream()]


def test_revocation_of_a_live_session() -> None:
    """A CRL update revoking a live session closes both sides; only relayed sessions count."""
    session = S.Session(LIMITS)
    session.start()
    assert session.revoked() == []  # not relayed yet: the handshake check decides
    session.handshake_done()
    session.receive(connect_packet("live"))
    session.upstream_connected()
    assert session.revoked() == [S.RevokedLive(), S.CloseUpstream(), S.CloseClient()]
    assert session.revoked() == []
    assert session.connection_lost("closed") == [
        S.CancelTimer(),
        S.SessionEnded("revoked", "certificate revoked by a revocation update"),
    ]


def test_relayed_session_end_is_reported_and_broker_closed() -> None:
    """A relayed session whose client leaves closes the broker side and is logged as ended;
    a broker that only half-closed is still closed by the gateway."""
    session = S.Session(LIMITS)
    session.start()
    session.handshake_done()
    session.receive(connect_packet("bye"))
    session.upstream_connected()
    assert session.connection_lost("Connection was closed cleanly.") == [
        S.CancelTimer(),
        S.CloseUpstream(),
        S.SessionEnded("client", "Connection was closed cleanly."),
    ]
    half = S.Session(LIMITS)
    half.start()
    half.handshake_done()
    half.receive(connect_packet("half"))
    half.upstream_connected()
    assert half.upstream_lost(half=True, why="it closed its sending side") == [S.CloseClient()]
    assert half.connection_lost("done") == [
        S.CancelTimer(),
        S.CloseUpstream(),
        S.SessionEnded("broker", "it closed its sending side"),
    ]
    gone = S.Session(LIMITS)
    gone.start()
    gone.handshake_done()
    gone.receive(connect_packet("gone"))
    gone.upstream_connected()
    assert gone.upstream_lost(why="connection lost (reset, or the network cut)") == [
        S.CloseClient()
    ]
    assert gone.connection_lost("Connection was closed cleanly.") == [
        S.CancelTimer(),
        S.SessionEnded("broker", "connection lost (reset, or the network cut)"),
    ]


def test_refusal_found_after_the_handshake() -> None:
    """A resumed session refused by the post-handshake check is closed before any CONNECT is
    read: no broker connection is ever asked for."""
    session = S.Session(LIMITS)
    session.start()
    assert session.handshake_done(None, ("revoked", "resumed session refused")) == [
        S.CancelTimer(),
        S.Refuse("revoked", "resumed session refused"),
        S.CloseClient(),
    ]
    assert session.receive(connect_packet("late")) == []
    assert session.connection_lost("closed") == [S.CancelTimer()]


def test_stop_for_shutdown_or_reload() -> None:
    """The gateway ends connections itself at shutdown (or after a reload's drain): a relayed
    session is closed on both sides and logged as ended by it; an earlier one is refused."""
    relayed = S.Session(LIMITS)
    relayed.start()
    relayed.handshake_done()
    relayed.receive(connect_packet("stopping"))
    relayed.upstream_connected()
    assert relayed.stop(Reason.SHUTDOWN, "the gateway is stopping") == [
        S.CloseUpstream(),
        S.CloseClient(),
    ]
    assert relayed.stop(Reason.SHUTDOWN, "again") == []
    assert relayed.connection_lost("closed") == [
        S.CancelTimer(),
        S.SessionEnded("shutdown", "the gateway is stopping"),
    ]
    early = S.Session(LIMITS)
    early.start()
    early.handshake_done()
    early.receive(connect_packet("opening"))  # the broker connection is being opened
    assert early.stop(Reason.RELOAD, "listener removed") == [
        S.CancelTimer(),
        S.CancelUpstream(),
        S.Refuse("reload", "listener removed"),
        S.CloseClient(),
    ]


def test_the_transition_table_is_the_machine() -> None:
    """The docstring's diagram is the table's; an event the table does not allow in a state
    is an error, not a silent no-op; every event of the table is a method of the session."""
    assert S.transitions_text() in (S.__doc__ or "")
    session = S.Session(LIMITS)
    session.start()
    session.handshake_done()
    with pytest.raises(S.SessionStateError, match="start in state CONNECT"):
        session.start()
    for event, moves in S.TRANSITIONS.items():
        assert callable(getattr(S.Session, event)), event
        assert S.State.CLOSED in moves or event == "start", event  # a closed session ignores
    assert set(S.TRANSITIONS["connection_lost"]) == set(S.State)


_EVENTS = {
    "handshake_done": lambda s: s.handshake_done(),
    "receive_connect": lambda s: s.receive(connect_packet("any")),
    "receive_bytes": lambda s: s.receive(b"\x00" * 10),
    "timer_handshake": lambda s: s.timer_fired(S.Timer.HANDSHAKE),
    "timer_connect": lambda s: s.timer_fired(S.Timer.CONNECT),
    "crl_admit": lambda s: s.revocation_decided(None, "fetched"),
    "crl_refuse": lambda s: s.revocation_decided(Reason.REVOKED, "fetched"),
    "upstream_connected": lambda s: s.upstream_connected(),
    "upstream_failed": lambda s: s.upstream_failed("refused"),
    "upstream_lost": lambda s: s.upstream_lost(),
    "upstream_half": lambda s: s.upstream_lost(half=True),
    "revoked": lambda s: s.revoked(),
    "stop": lambda s: s.stop(Reason.SHUTDOWN, "stopping"),
    "connection_lost": lambda s: s.connection_lost("gone"),
}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(sorted(_EVENTS)), max_size=12))
def test_any_order_of_events_stays_in_the_table(events: list[str]) -> None:
    """Callbacks race (a broker that connects after the client left, a CRL verdict after a
    timeout): any order of events after the start is answered within the table, never an
    error; nothing reaches the broker before a CONNECT was read."""
    session = S.Session(LIMITS)
    session.start()
    sent_upstream = False
    for name in events:
        actions = _EVENTS[name](session)
        if any(isinstance(a, S.OpenUpstream) for a in actions):
            assert session.connect is not None
        sent_upstream = sent_upstream or any(isinstance(a, S.StartRelay) for a in actions)
    if sent_upstream:
        assert session.connect is not None
