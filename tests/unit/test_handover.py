"""Inherited listening sockets: matched to a listener by the exact address each is bound to,
the rest closed; a takeover refused cleanly when nothing answers."""

from __future__ import annotations

import os
import socket

import pytest

from gateway.handover import Inherited, TakeoverError, take_over


def _listening(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.bind((host, 0))
    sock.listen()
    return sock


def test_sockets_are_taken_by_the_listener_bound_to_their_address(tmp_path: object) -> None:
    a, b = _listening(), _listening()
    unix = socket.socket(socket.AF_UNIX)
    path = os.path.join(str(tmp_path), "t.sock")
    unix.bind(path)
    unix.listen()
    inherited = Inherited([a, b, unix])
    assert inherited.take(("127.0.0.1", a.getsockname()[1])) == [a]
    assert inherited.take(("0.0.0.0", b.getsockname()[1])) == []  # not the same address
    assert inherited.take(path) == [unix]
    inherited.close_rest()
    assert b.fileno() == -1 and inherited.by_bind == {}  # what no listener took: closed
    a.close()
    unix.close()


def test_a_takeover_with_nothing_answering_is_one_clear_error(tmp_path: object) -> None:
    with pytest.raises(TakeoverError, match="cannot take over from .*missing.sock"):
        take_over(os.path.join(str(tmp_path), "missing.sock"), timeout=1)
