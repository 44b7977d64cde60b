"""The master's end of one worker's channel (AMP over a socket pair), and what the master
answers a worker's questions with (``MasterAnswers``: the parts of its listeners in force)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol
from twisted.protocols import amp
from twisted.python.failure import Failure

from gateway.errors import describe_error
from gateway.parts import ListenerParts
from gateway.workers import commands as c


def clip(der: bytes) -> bytes:
    """An AMP value holds 65,535 bytes; a real OCSP response is a few KB."""
    return der if len(der) <= 65535 else b""


class OneProtocol(protocol.Factory):
    def __init__(self, proto: protocol.Protocol) -> None:
        self.proto = proto

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        return self.proto


class MasterAnswers:
    """A worker's questions, answered from the master's listeners: a distribution point to
    fetch, the end of its first fetch, an OCSP answer (the master asks once for all)."""

    def __init__(
        self,
        parts: Callable[[str], ListenerParts | None],
        flushed: Callable[[str], defer.Deferred[None]],
    ) -> None:
        """``parts(listener)``: its parts in force (None: no such listener);
        ``flushed(listener)``: fires once its CRLs held now have reached the workers."""
        self.parts = parts
        self.flushed = flushed

    def discover(self, listener: str, url: str) -> None:
        parts = self.parts(listener)
        if parts is not None and parts.crl is not None:
            parts.crl.discover(url)

    def when_attempted(self, listener: str, url: str) -> defer.Deferred[None]:
        parts = self.parts(listener)
        if parts is None or parts.crl is None:
            return defer.succeed(None)
        d = parts.crl.when_attempted(url)
        return d.addBoth(lambda _: self.flushed(listener))

    def ocsp_query(
        self,
        listener: str,
        key_hash: bytes,
        issuer: bytes,
        serial: int,
        responder: str | None,
        subject: str,
        fresher_than: float,
    ) -> defer.Deferred[dict[str, Any]]:
        """A worker's OCSP question, answered by the master's client of the listener."""
        parts = self.parts(listener)
        client = parts.ocsp_client if parts is not None else None
        if client is None:
            return defer.succeed({"der": b"", "error": "no OCSP checking on this listener"})
        question = client.question_for(key_hash, serial, responder, subject, issuer)
        if question is None:
            return defer.succeed({"der": b"", "error": "issuer not in the CA bundle"})
        d = client.ask(question, fresher_than)
        return d.addCallbacks(
            lambda answer: {"der": clip(answer.der), "error": ""},
            lambda f: {"der": b"", "error": describe_error(f.value)},
        )


class MasterChannel(amp.AMP):
    """The master's end of one worker's channel."""

    def __init__(
        self,
        answers: MasterAnswers,
        on_connected: Callable[[MasterChannel], None],
        on_lost: Callable[[MasterChannel], None],
    ) -> None:
        super().__init__()
        self.answers = answers
        self.on_connected = on_connected
        self.on_lost = on_lost

    def connectionMade(self) -> None:
        super().connectionMade()
        self.on_connected(self)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        super().connectionLost(reason)
        self.on_lost(self)

    @c.Discover.responder
    def discover(self, listener: str, url: str) -> dict[str, Any]:
        self.answers.discover(listener, url)
        return {}

    @c.OcspQuery.responder
    def ocsp_query(
        self,
        listener: str,
        key_hash: bytes,
        issuer: bytes,
        serial: str,
        responder: str,
        subject: str,
        fresher_than: float,
    ) -> defer.Deferred[dict[str, Any]]:
        return self.answers.ocsp_query(
            listener, key_hash, issuer, int(serial), responder or None, subject, fresher_than
        )

    @c.WhenAttempted.responder
    def when_attempted(self, listener: str, url: str) -> defer.Deferred[dict[str, Any]]:
        return self.answers.when_attempted(listener, url).addCallback(lambda _: {})
