"""The connection's transitions as data (``TRANSITIONS``), checked on every event of the
session (``checked``), and written out as text for its docstring (``transitions_text``), in
the manner of h11's ``_state.py``: an event in a state the table does not list is a
``SessionStateError``, a bug in the adapter."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from gateway.proxy.actions import State

HANDSHAKE, CONNECT, REVOCATION_HOLD, AUTH_HOLD, UPSTREAM, RELAY, CLOSING, CLOSED = (
    State.HANDSHAKE,
    State.CONNECT,
    State.REVOCATION_HOLD,
    State.AUTH_HOLD,
    State.UPSTREAM,
    State.RELAY,
    State.CLOSING,
    State.CLOSED,
)
_ORDER = (HANDSHAKE, CONNECT, REVOCATION_HOLD, AUTH_HOLD, UPSTREAM, RELAY, CLOSING, CLOSED)
# Before the gateway closes it:
_OPEN = (HANDSHAKE, CONNECT, REVOCATION_HOLD, AUTH_HOLD, UPSTREAM, RELAY)


def _ignored(*states: State) -> dict[State, frozenset[State]]:
    """States where an event changes nothing (it can arrive late: the adapter's callbacks
    race with the gateway's own closes)."""
    return {state: frozenset({state}) for state in states}


def _except(*states: State) -> tuple[State, ...]:
    return tuple(s for s in _ORDER if s not in states)


# event -> state before -> the states it may leave the session in. An event in a state not
# listed is an error (SessionStateError): the adapter called it where it cannot happen.
TRANSITIONS: dict[str, dict[State, frozenset[State]]] = {
    "start": {HANDSHAKE: frozenset({HANDSHAKE})},
    "handshake_done": {
        HANDSHAKE: frozenset({CONNECT, CLOSING}),
        **_ignored(*_except(HANDSHAKE)),
    },
    "receive": {
        CONNECT: frozenset({CONNECT, UPSTREAM, REVOCATION_HOLD, AUTH_HOLD, CLOSING}),
        UPSTREAM: frozenset({UPSTREAM, CLOSING}),
        REVOCATION_HOLD: frozenset({REVOCATION_HOLD, CLOSING}),
        AUTH_HOLD: frozenset({AUTH_HOLD, CLOSING}),
        **_ignored(HANDSHAKE, RELAY, CLOSING, CLOSED),
    },
    "timer_fired": {**{s: frozenset({CLOSING}) for s in _OPEN}, **_ignored(CLOSING, CLOSED)},
    "revocation_decided": {
        REVOCATION_HOLD: frozenset({UPSTREAM, AUTH_HOLD, CLOSING}),
        **_ignored(*_except(REVOCATION_HOLD)),
    },
    "authorization_decided": {
        AUTH_HOLD: frozenset({UPSTREAM, CLOSING}),
        **_ignored(*_except(AUTH_HOLD)),
    },
    "upstream_connected": {UPSTREAM: frozenset({RELAY}), **_ignored(*_except(UPSTREAM))},
    "upstream_failed": {UPSTREAM: frozenset({CLOSING}), **_ignored(*_except(UPSTREAM))},
    "upstream_lost": {RELAY: frozenset({CLOSING}), **_ignored(*_except(RELAY))},
    "revoked": {RELAY: frozenset({CLOSING}), **_ignored(*_except(RELAY))},
    "stop": {**{s: frozenset({CLOSING}) for s in _OPEN}, **_ignored(CLOSING, CLOSED)},
    "connection_lost": {s: frozenset({CLOSED}) for s in _ORDER},
}


def transitions_text() -> str:
    """The state-changing transitions, one line per state and event (in the session
    module's docstring, where a test holds them to the table)."""
    lines = []
    for state in _ORDER:
        for event, moves in TRANSITIONS.items():
            targets = moves.get(state, frozenset()) - {state}
            if targets:
                names = " | ".join(t.name for t in _ORDER if t in targets)
                lines.append(f"    {state.name} --{event}--> {names}")
    return "\n".join(lines)


class SessionStateError(Exception):
    """An event where the table has no transition for it: a bug in the adapter."""


class _Stateful(Protocol):
    state: State


R = TypeVar("R")


def checked(method: Callable[..., R]) -> Callable[..., R]:
    """Check an event method against TRANSITIONS: allowed in the state it finds, and
    leaving the machine in a state the table allows."""
    name = method.__name__

    @functools.wraps(method)
    def event(self: _Stateful, *args: Any, **kwargs: Any) -> R:
        before = self.state
        allowed = TRANSITIONS[name].get(before)
        if allowed is None:
            raise SessionStateError(f"{name} in state {before.name}")
        actions = method(self, *args, **kwargs)
        if self.state not in allowed:
            raise SessionStateError(f"{name} from {before.name} to {self.state.name}")
        return actions

    return event
