"""The authorization hook's core: answers read, cached, shared, bounded in number and time,
and every failure decided by the failure policy; the session holds its CONNECT meanwhile."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, task

from gateway import mqtt
from gateway.choices import FailurePolicy
from gateway.config.model import AuthSettings
from gateway.proxy import session as S
from gateway.proxy.authorize import AuthAnswer, Authorizer, AuthRequest, read_answer
from gateway.reasons import Reason
from gateway.revocation.fetch import FetchError
from gateway.testing import connect_packet


class Hook:
    """A fake fetch: each request's Deferred, answered by the test."""

    def __init__(self) -> None:
        self.asked: list[tuple[dict[str, Any], defer.Deferred[bytes]]] = []
        self.cancelled = 0

    def fetch(self, url: str, timeout: float, size: int, method: str, body: bytes, headers: Any):
        assert method == "POST" and size == 64 * 1024
        d: defer.Deferred[bytes] = defer.Deferred(lambda _: self._cancel())
        self.asked.append((json.loads(body), d))
        return d

    def _cancel(self) -> None:
        self.cancelled += 1


def authorizer(**kw: Any) -> tuple[Authorizer, Hook, task.Clock]:
    hook, clock = Hook(), task.Clock()
    settings = AuthSettings(url="http://127.0.0.1:1/auth", **kw)
    return Authorizer("l", settings, hook.fetch, clock), hook, clock


def request(client_id: str = "dev-1", fingerprint: str = "ab" * 32) -> AuthRequest:
    return AuthRequest("l", "127.0.0.1:4000", client_id, "user", 5, fingerprint)


def result(d: defer.Deferred[Any]) -> Any:
    got: list[Any] = []
    d.addCallback(lambda value: got.append(value) or value)
    assert got, "not decided yet"
    return got[0]


def test_answers_are_read_or_refused_in_plain_words() -> None:
    assert read_answer(b'{"result": "allow"}') == AuthAnswer(True)
    assert read_answer(b'{"result": "allow", "username": "t1/d"}') == AuthAnswer(True, "t1/d")
    assert read_answer(b'{"result": "deny", "username": "x"}') == AuthAnswer(False)
    for body, why in [
        (b"<html>", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"result": "maybe"}', "neither"),
        (b'{"result": "allow", "username": 7}', "not a string"),
        (b'{"result": "allow", "username": "\\ud800"}', "surrogate"),
        (b'{"result": "allow", "username": "a\\u0000"}', "NUL"),
        (b"[" * 100000, "not JSON"),
    ]:
        with pytest.raises(ValueError, match=why):
            read_answer(body)


@given(st.binary(max_size=200))
def test_any_bytes_are_an_answer_or_a_value_error(body: bytes) -> None:
    try:
        answer = read_answer(body)
    except ValueError:
        return
    assert answer.allowed in (True, False)


def test_an_allow_is_told_once_and_then_cached_until_its_ttl() -> None:
    auth, hook, clock = authorizer(cache_ttl=60.0)
    d = auth.ask(request())
    ((asked, answer),) = hook.asked
    assert asked["clientid"] == "dev-1" and asked["cert_fingerprint"] == "ab" * 32
    assert asked["peer_address"] == "127.0.0.1:4000" and asked["protocol_level"] == 5
    answer.callback(b'{"result": "allow", "username": "tenant-a/dev-1"}')
    assert result(d) == (None, "auth_http: allow (answered)", "tenant-a/dev-1")
    assert result(auth.ask(request()))[1] == "auth_http: allow (cached)"
    assert len(hook.asked) == 1
    clock.advance(61)
    auth.ask(request())
    assert len(hook.asked) == 2  # expired: asked again


def test_a_deny_refuses_and_is_cached_too() -> None:
    auth, hook, _ = authorizer()
    d = auth.ask(request())
    hook.asked[0][1].callback(b'{"result": "deny"}')
    assert result(d)[0] is Reason.AUTH_DENIED
    assert result(auth.ask(request()))[0] is Reason.AUTH_DENIED
    assert len(hook.asked) == 1


def test_devices_asking_the_same_question_share_one_request() -> None:
    auth, hook, _ = authorizer()
    first, second = auth.ask(request()), auth.ask(request())
    auth.ask(request("dev-2"))
    assert len(hook.asked) == 2 and auth.in_flight == 2
    hook.asked[0][1].callback(b'{"result": "allow"}')
    assert result(first)[0] is None and result(second)[0] is None
    assert auth.counts["shared"] == 1


@pytest.mark.parametrize(
    ("policy", "refusal"),
    [(FailurePolicy.REJECT, Reason.AUTH_UNAVAILABLE), (FailurePolicy.ACCEPT, None)],
)
def test_failures_are_decided_by_the_policy_and_never_cached(
    policy: FailurePolicy, refusal: Reason | None
) -> None:
    auth, hook, clock = authorizer(failure_policy=policy, timeout=2.0)
    down = auth.ask(request("down"))
    hook.asked[-1][1].errback(FetchError("connect", "http://127.0.0.1:1/auth: refused"))
    assert result(down)[0] is refusal and "refused" in result(down)[1]
    garbage = auth.ask(request("garbage"))
    hook.asked[-1][1].callback(b"<html>oops</html>")
    assert result(garbage)[0] is refusal and "not JSON" in result(garbage)[1]
    slow = auth.ask(request("slow"))
    clock.advance(2.0)
    assert result(slow)[0] is refusal and "no answer within 2s" in result(slow)[1]
    assert hook.cancelled == 1  # the late request is dropped
    auth.ask(request("down"))
    assert len(hook.asked) == 4  # a failure is asked again
    assert auth.counts["failed"] == 3


def test_at_most_max_requests_are_in_flight_and_the_queue_counts_in_the_timeout() -> None:
    auth, hook, clock = authorizer(max_requests=1, timeout=5.0)
    first = auth.ask(request("a"))
    queued = auth.ask(request("b"))
    assert len(hook.asked) == 1  # b waits for a free request
    clock.advance(3)
    hook.asked[0][1].callback(b'{"result": "allow"}')
    assert result(first)[0] is None
    assert len(hook.asked) == 2  # now b's
    clock.advance(2.0)  # 5 s since b asked
    assert result(queued)[0] is Reason.AUTH_UNAVAILABLE


def test_the_session_holds_the_connect_until_the_hook_decides() -> None:
    limits = S.SessionLimits(15.0, 10.0, 65536, authorize=True)
    for refusal, ends in ((None, S.OpenUpstream), (Reason.AUTH_DENIED, S.CloseClient)):
        session = S.Session(limits)
        session.start()
        session.handshake_done()
        actions = session.receive(connect_packet("held", level=5))
        assert [type(a) for a in actions] == [S.CancelTimer, S.PauseClient, S.AskAuthorization]
        assert session.state is S.State.AUTH_HOLD
        assert session.receive(b"\xc0\x00") == []  # held with the CONNECT
        decided = session.authorization_decided(refusal, "auth_http: deny (answered)")
        assert isinstance(decided[-1], ends)
        if refusal is not None:
            assert decided[0] == S.Refuse(Reason.AUTH_DENIED, "auth_http: deny (answered)")
            sent = [a.data for a in decided if isinstance(a, S.SendToClient)]
            assert sent == [mqtt.connack(5, mqtt.NOT_AUTHORIZED)]
    late = S.Session(limits)
    assert late.authorization_decided(None, "late") == []  # (never held: ignored)


def test_the_tenant_is_told_and_keys_the_cache() -> None:
    """The hook is told the device's tenant; one listener's hook asked about two tenants'
    devices with the same certificate and ids answers each on its own."""
    mine = attrs.evolve(request(), tenant="acme")
    assert json.loads(mine.body())["tenant"] == "acme"
    assert json.loads(request().body())["tenant"] is None
    assert mine.key() != request().key()
