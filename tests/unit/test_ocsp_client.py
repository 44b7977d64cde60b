"""OCSP checking of client certificates, deterministically: the decision table, the answers
held, the client's single flight and per-responder cap (a fetcher under test control),
validation of every kind of bad answer, the persisted cache."""

from __future__ import annotations

import datetime
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock

from gateway import testing as support
from gateway.config import parse_config
from gateway.demo import pki
from gateway.errors import GatewayError
from gateway.reasons import CrlVerdict, OcspVerdict, Outcome, Reason
from gateway.revocation import ocsp
from gateway.revocation.chains import IssuerIndex
from gateway.revocation.combine import combine
from gateway.revocation.ocsp_answers import OcspAnswer, OcspAnswers, issuer_key_hash
from gateway.revocation.ocsp_checker import OcspChecker
from gateway.revocation.ocsp_client import OcspClient
from gateway.testing.ocsp import response, unsuccessful

OCSP_GOOD, OCSP_REVOKED = OcspVerdict.GOOD, OcspVerdict.REVOKED
OCSP_UNAVAILABLE, OCSP_UNKNOWN = OcspVerdict.UNAVAILABLE, OcspVerdict.UNKNOWN

RESPONDER = "http://ocsp.test/"


def test_the_decision_table() -> None:
    """Revoked by either check refuses; 'either' lets a good verdict of one check stand for
    an undecided other; otherwise each undecided check follows its own policy; a check
    still waiting holds."""
    G, R, M = CrlVerdict.GOOD, CrlVerdict.REVOKED, CrlVerdict.MISSING
    for either in (False, True):
        assert combine(R, OCSP_GOOD, either, True, True).reason is Reason.REVOKED
        assert combine(G, OCSP_REVOKED, either, False, False).reason is Reason.OCSP_REVOKED
        assert combine(None, OCSP_REVOKED, either, True, True).reason is Reason.OCSP_REVOKED
        assert combine(G, OCSP_GOOD, either, True, True).outcome is Outcome.ACCEPT
        assert combine(None, OcspVerdict.PENDING, either, True, True).outcome is Outcome.HOLD
        assert combine(CrlVerdict.PENDING, None, either, True, True).outcome is Outcome.HOLD
    # both: each check must pass on its own.
    assert combine(M, OCSP_GOOD, False, True, True).reason is Reason.CRL_MISSING
    assert combine(G, OCSP_UNAVAILABLE, False, True, True).reason is Reason.OCSP_UNAVAILABLE
    assert combine(G, OcspVerdict.PENDING, False, True, True).outcome is Outcome.HOLD
    accepted = combine(M, OCSP_UNKNOWN, False, False, False)
    assert accepted.outcome is Outcome.ACCEPT and accepted.accepted == (
        "crl_missing",
        "ocsp_unknown",
    )
    # either: one good verdict is enough, even while the other waits.
    assert combine(M, OCSP_GOOD, True, True, True).outcome is Outcome.ACCEPT
    assert combine(G, OCSP_UNAVAILABLE, True, True, True).outcome is Outcome.ACCEPT
    assert combine(G, OcspVerdict.PENDING, True, True, True).outcome is Outcome.ACCEPT
    assert combine(M, OCSP_UNKNOWN, True, False, True).reason is Reason.OCSP_UNKNOWN
    assert combine(M, OCSP_UNKNOWN, True, True, False).reason is Reason.CRL_MISSING


def _answer(status: str = "good", this: float = 100.0, nxt: float = 200.0) -> OcspAnswer:
    return OcspAnswer(OcspVerdict(status), this, nxt, this, b"", RESPONDER)


def test_answers_are_bounded_used_until_next_update_plus_grace_and_never_older() -> None:
    clock = Clock()
    clock.advance(150)
    answers = OcspAnswers(clock, size=2, grace=30)
    answers.put((b"k", 1), _answer())
    assert answers.usable((b"k", 1)) is not None
    clock.advance(75)  # 225: past nextUpdate, within the grace
    assert answers.usable((b"k", 1)) is not None
    clock.advance(10)  # 235: past the grace
    assert answers.usable((b"k", 1)) is None
    assert not answers.put((b"k", 1), _answer("revoked", this=90))  # older: kept out
    assert answers.peek((b"k", 1)).status == "good"  # type: ignore[union-attr]
    answers.put((b"k", 2), _answer())
    answers.put((b"k", 3), _answer())
    assert len(answers) == 2 and answers.peek((b"k", 1)) is None  # least recently used went
    assert answers.hits == 2 and answers.misses == 1


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> support.Pki:
    return support.make_pki(str(tmp_path_factory.mktemp("pki")), "rsa")


def test_issuer_key_hash_is_ocsps(p: support.Pki) -> None:
    """The key of the answers is the CertID's issuerKeyHash (RSA and EC issuers)."""
    for ca in (p.inter, pki.make_ca("ec ca")):
        leaf = pki.issue(ca, "x").cert
        request = ocsp.ocsp.OCSPRequestBuilder().add_certificate(leaf, ca.cert, hashes.SHA1())
        assert issuer_key_hash(ca.cert) == request.build().issuer_key_hash


class Fetcher:
    """Requests kept in flight until the test answers them."""

    def __init__(self) -> None:
        self.pending: list[tuple[bytes, defer.Deferred[bytes]]] = []
        self.requests = 0
        self.max_in_flight = 0

    def fetch(self, url: str, timeout: float, max_size: int, **kw: Any) -> defer.Deferred[bytes]:
        d: defer.Deferred[bytes] = defer.Deferred()
        self.pending.append((kw["body"], d))
        self.requests += 1
        self.max_in_flight = max(self.max_in_flight, len(self.pending))
        return d

    def answer(self, make: Any) -> None:
        pending, self.pending = self.pending, []
        for body, d in pending:
            request = ocsp.ocsp.load_der_ocsp_request(body)
            d.callback(make(request.serial_number))


def settings_of(p: support.Pki, **extra: str) -> Any:
    opts = {"ocsp_client_check": "leaf", "ocsp_client_responder_url": RESPONDER}
    opts.update(extra)
    text = support.listener_conf("t", 8883, 1883, p, opts)
    return parse_config(text).listener("t").client_ocsp


def client_for(p: support.Pki, cache_dir: str | None = None, **extra: str) -> tuple[Any, ...]:
    clock = Clock()
    clock.advance(pki.now().timestamp())
    fetcher = Fetcher()
    issuers = IssuerIndex.of([p.root.cert, p.inter.cert])
    client = OcspClient("t", settings_of(p, **extra), clock, fetcher, issuers, cache_dir, _run_all)
    checker = OcspChecker(
        client.settings, client.answers, issuers, client.ask, clock, tracker=client
    )
    return clock, fetcher, client, checker


def test_one_request_per_certificate_and_a_cap_per_responder(p: support.Pki) -> None:
    """1,000 devices at once, each connecting twice: 1,000 requests, never more than
    ocsp_client_max_requests in flight; every waiter gets its answer."""
    clock, fetcher, client, checker = client_for(p, ocsp_client_max_requests="8")
    devices = [pki.issue(p.inter, f"d{i}").cert for i in range(1000)]
    by_serial = {d.serial_number: d for d in devices}
    waits = []
    for cert in devices * 2:
        q = checker.question(cert, cert.serial_number)
        assert checker.status(q) is OcspVerdict.PENDING
        waits.append(checker.wait((q,)))
    assert fetcher.requests == 8  # the rest queue
    while fetcher.pending:
        fetcher.answer(lambda serial: response(by_serial[serial], p.inter))
    assert fetcher.requests == 1000 and fetcher.max_in_flight == 8
    results = [w.result for w in waits]
    assert results == [[("good", "")]] * 2000
    stats = client.responders[RESPONDER]
    assert (stats.requests, stats.failures, stats.in_flight, stats.queued) == (1000, 0, 0, 0)
    assert checker.status(checker.question(devices[0], devices[0].serial_number)) == "good"


@pytest.mark.parametrize(
    "kind",
    [
        "try_later",
        "garbage",
        "other_ca",
        "other_serial",
        "expired",
        "delegate_without_eku",
        "http_error",
        "timeout",
    ],
)
def test_every_bad_answer_leaves_the_certificate_undecided(p: support.Pki, kind: str) -> None:
    """None of these is ever held; the waiting device gets 'unavailable' (then the
    policy decides), and the responder's failures are counted."""
    clock, fetcher, client, checker = client_for(p)
    cert = pki.issue(p.inter, f"bad-{kind}").cert
    other = pki.make_ca("another CA")
    delegate = pki.issue(p.inter, "delegate")  # no id-kp-OCSPSigning
    q = checker.question(cert, cert.serial_number)
    waiting = checker.wait((q,))
    old = pki.now() - datetime.timedelta(hours=3)
    make = {
        "try_later": lambda s: unsuccessful(),
        "garbage": lambda s: b"\x30\x03garbage",
        "other_ca": lambda s: response(cert, other),
        "other_serial": lambda s: response(pki.issue(p.inter, "someone else").cert, p.inter),
        "expired": lambda s: response(cert, p.inter, this_update=old),
        "delegate_without_eku": lambda s: response(
            cert, p.inter, signer=delegate, include_signer=True
        ),
    }
    if kind == "http_error":
        fetcher.pending[0][1].errback(GatewayError("http_status", "HTTP 500"))
    elif kind == "timeout":
        clock.advance(client.settings.http_timeout + 2)
    else:
        fetcher.answer(make[kind])
    ((status, why),) = waiting.result
    assert status == "unavailable" and why, why
    assert len(client.answers) == 0
    if kind != "timeout":
        assert client.responders[RESPONDER].failures == 1


def test_kept_answers_serve_a_restart_while_the_responder_is_down(
    p: support.Pki, tmp_path: object
) -> None:
    """ocsp_cache.dir keeps the answers; a restart validates them again and serves them
    without a request; an answer past its nextUpdate by then is not restored."""
    directory = str(tmp_path)
    clock, fetcher, client, checker = client_for(p, directory)
    good = pki.issue(p.inter, "kept-good").cert
    short = pki.issue(p.inter, "kept-short").cert
    for cert in (good, short):
        checker.wait((checker.question(cert, cert.serial_number),))
    fetcher.answer(
        lambda s: response(
            good if s == good.serial_number else short,
            p.inter,
            next_update=datetime.timedelta(hours=1 if s == good.serial_number else 0.03),
        )
    )
    assert len(client.answers) == 2
    client._write()  # noqa: SLF001 (what the persist timer runs)
    assert os.path.exists(os.path.join(directory, "t.client-ocsp.json"))
    clock2, fetcher2, client2, checker2 = client_for(p, directory)
    clock2.advance(120)  # the short answer's nextUpdate has passed
    client2._read()  # noqa: SLF001 (what the start runs)
    assert checker2.status(checker2.question(good, good.serial_number)) == "good"
    assert checker2.status(checker2.question(short, short.serial_number)) is OcspVerdict.PENDING
    assert fetcher2.requests == 0


class _Done:
    def whenDone(self) -> defer.Deferred[None]:  # noqa: N802
        return defer.succeed(None)


def _run_all(iterator: Any) -> _Done:
    for _ in iterator:
        pass
    return _Done()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_from_a_responder_are_an_answer_or_its_one_error(data: bytes) -> None:
    issuer = _EC_CA
    try:
        info = ocsp.validate_serial(data, 5, issuer.cert, 0.0, max_age=3600)
    except ocsp.OcspError:
        return
    assert info.status in ("good", "revoked", "unknown")


_EC_CA = pki.make_ca("hypothesis CA")
