"""The CRL refresh service, deterministically: Clock, treq's RequestTraversalAgent, the CRL
worker run in process."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from treq.testing import RequestTraversalAgent
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from gateway import testing as support
from gateway.config import Config, parse_config
from gateway.demo import pki
from gateway.peer import PeerVerification, Pending, PendingCrl
from gateway.revocation import crl_kept, worker
from gateway.revocation.checker import RevocationChecker
from gateway.revocation.crl import describe_loaded
from gateway.revocation.crl_service import CrlCache, CrlService
from gateway.revocation.fetch import HttpFetcher
from gateway.testing import InlineProcessor
from tests.unit.test_crl_core import make_crl, pem

URL = "http://ca.test/devices.crl"


class Routes(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[str, Callable[[], tuple[int, bytes]]] = {}
        self.hits: Counter[str] = Counter()
        self.hanging: list[Any] = []

    def set(self, path: str, status: int, body: bytes = b"") -> None:
        self.routes[path] = lambda: (status, body)

    def render_GET(self, request: Any) -> Any:
        path = request.path.decode()
        self.hits[path] += 1
        route = self.routes.get(path)
        status, body = route() if route else (404, b"not found")
        if status == 0:
            self.hanging.append(request)
            return NOT_DONE_YET
        request.setResponseCode(status)
        return body


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> support.Pki:
    return support.make_pki(str(tmp_path_factory.mktemp("pki")))


def listener(p: support.Pki, **extra: str) -> Config:
    opts = {"enable_crl_cache": "true", "crl_cache_urls": URL}
    opts.update(extra)
    globals_ = opts.pop("globals", "")
    return parse_config(support.listener_conf("t", 8883, 1883, p, opts) + globals_)


class CountingProcessor(InlineProcessor):
    """The worker in process, counting its runs (a CRL parsed) and what it was asked."""

    def __init__(self) -> None:
        self.runs: list[bytes] = []

    def process(self, header: bytes, body: list[bytes], max_output: int) -> Any:
        self.runs.append(header)
        return super().process(header, body, max_output)


class Harness:
    def __init__(self, p: support.Pki, **extra: str) -> None:
        self.p = p
        config = listener(p, **extra)
        self.config = config.listener("t").crl
        assert self.config is not None
        self.clock = Clock()
        self.clock.advance(pki.now().timestamp())
        self.routes = Routes()
        self.stub = RequestTraversalAgent(self.routes)
        self.cache = CrlCache(self.clock, self.config.grace_period)
        with open(p.ca_file, "rb") as f:
            trust_pem = f.read()
        self.updates: list[Any] = []
        self.processor = CountingProcessor()
        self.service = CrlService(
            "t",
            self.config,
            config.globals.crl_refresh_interval,
            config.globals.crl_cache_dir,
            self.clock,
            HttpFetcher(self.stub, self.clock),
            self.processor,
            self.cache,
            trust_pem,
            on_update=self.updates.append,
        )
        self.checker = RevocationChecker(self.cache, self.config, self.service, self.clock)

    def flush(self) -> None:
        for _ in range(3):
            self.stub.flush()
            self.clock.advance(0)

    def advance(self, seconds: float, step: float = 1.0) -> None:
        while seconds > 0:
            self.clock.advance(min(step, seconds))
            seconds -= step
            self.flush()

    def crl(self, serials: list[int], number: int = 1, hours: float = 1) -> bytes:
        return pem(
            make_crl(
                self.p.inter,
                serials,
                number=number,
                next_update=datetime.timedelta(hours=hours),
                this_update=datetime.datetime.fromtimestamp(
                    self.clock.seconds() - 60, datetime.timezone.utc
                ),
            )
        )

    def status(self, serial: int) -> str:
        return self.cache.status(self.p.inter.cert.subject.public_bytes(), serial)

    def state(self) -> Any:
        return self.service.sources[URL].state


def test_first_fetch_installs_and_reports(p: support.Pki) -> None:
    """At start-up the CRL is fetched, validated, installed; state says what happened."""
    h = Harness(p)
    h.routes.set("/devices.crl", 200, h.crl([42, 43], number=9))
    h.service.startService()
    h.flush()
    assert h.service.ready.called
    assert h.status(42) == "revoked" and h.status(44) == "good"
    (snap,) = h.service.status()
    assert snap.last_result == "updated" and snap.last_error is None
    assert snap.crls[0].entries == 2 and snap.crls[0].number == 9
    assert snap.next_refresh is not None and snap.size is not None and snap.size > 0
    assert len(h.updates) == 1


def test_refresh_on_interval_and_before_next_update(p: support.Pki) -> None:
    """Refreshes happen every refresh_interval, or at nextUpdate when that comes sooner."""
    h = Harness(p, globals="crl_cache.refresh_interval = 10m\n")
    h.routes.set("/devices.crl", 200, h.crl([1], number=1, hours=1))
    h.service.startService()
    h.flush()
    h.advance(599)
    assert h.routes.hits["/devices.crl"] == 1
    # thisUpdate a minute ago, nextUpdate in two minutes
    h.routes.set("/devices.crl", 200, h.crl([1, 2], number=2, hours=3 / 60))
    h.advance(2)
    assert h.routes.hits["/devices.crl"] == 2 and h.status(2) == "revoked"
    h.advance(110)
    assert h.routes.hits["/devices.crl"] == 2
    h.advance(20)
    assert h.routes.hits["/devices.crl"] == 3  # at nextUpdate, before the 10m interval


@pytest.mark.parametrize(
    "status, body, error",
    [
        (404, b"nope", "http_status: http://ca.test/devices.crl: HTTP 404"),
        (500, b"oops", "http_status: http://ca.test/devices.crl: HTTP 500"),
        (200, b"<html>garbage with status 200</html>", "garbage"),
        (0, b"", "timeout"),
    ],
)
def test_failures_keep_the_last_good_crl_and_back_off(
    p: support.Pki, status: int, body: bytes, error: str
) -> None:
    """A failed refresh is logged with its reason, keeps the CRL held, and retries with backoff."""
    h = Harness(p, globals="crl_cache.refresh_interval = 5m\n", crl_cache_http_timeout="3s")
    h.routes.set("/devices.crl", 200, h.crl([7]))
    h.service.startService()
    h.flush()
    h.routes.set("/devices.crl", status, body)
    with capturedLogs() as events:
        h.advance(301)
        h.advance(4)  # past the HTTP timeout for the hanging case
    assert h.status(7) == "revoked"
    assert h.state().last_result == "error" and error in h.state().last_error
    assert any("keeping the last good CRL" in str(e.get("log_format")) for e in events)
    hits = h.routes.hits["/devices.crl"]
    h.advance(11)
    assert h.routes.hits["/devices.crl"] == hits + 1  # retry after ~10s
    h.advance(21)
    assert h.routes.hits["/devices.crl"] == hits + 2  # then ~20s


def test_crl_of_another_ca_and_older_crl_are_refused(p: support.Pki) -> None:
    """A CRL signed by another CA, or older than the one held, never replaces it."""
    h = Harness(p, globals="crl_cache.refresh_interval = 1m\n")
    h.routes.set("/devices.crl", 200, h.crl([5], number=10))
    h.service.startService()
    h.flush()
    other = pki.make_ca("mqttgw test devices CA")  # same name, other key
    h.routes.set("/devices.crl", 200, pem(make_crl(other, [], number=11)))
    h.advance(61)
    assert h.state().last_result == "error" and "bad_signature" in h.state().last_error
    assert h.status(5) == "revoked"
    h.routes.set("/devices.crl", 200, h.crl([], number=9))
    h.advance(61)
    assert h.state().last_result == "older"
    assert h.status(5) == "revoked"
    assert [i.number for i in h.cache.infos()] == [10]


def test_timer_survives_unexpected_errors(p: support.Pki) -> None:
    """An exception inside a refresh is logged; the LoopingCall keeps running."""
    h = Harness(p, globals="crl_cache.refresh_interval = 1m\n")
    h.routes.set("/devices.crl", 200, h.crl([1]))

    class Exploding:
        def process(self, header: bytes, body: list[bytes], max_output: int) -> Any:
            raise TypeError("boom")

    h.service._processor = Exploding()
    with capturedLogs() as events:
        h.service.startService()
        h.flush()
        h.advance(30)
    assert h.service.scheduler._loop is not None and h.service.scheduler._loop.running
    assert h.routes.hits["/devices.crl"] >= 2  # retried
    assert any(e.get("log_failure") is not None for e in events)


@pytest.mark.parametrize("policy", ["reject", "accept"])
def test_expired_crl_and_missing_crl_policy(p: support.Pki, policy: str) -> None:
    """Past nextUpdate (+ grace) or with no CRL ever obtained, the policy decides."""
    h = Harness(p, crl_expired_policy=policy, crl_grace_period="1m")
    leaf = pki.issue(h.p.inter, "leaf").cert
    issuer = leaf.issuer.public_bytes()
    missing = h.checker.check(leaf, issuer, leaf.serial_number, 0, None)
    h.routes.set("/devices.crl", 200, h.crl([], hours=0.5))
    h.service.startService()
    h.flush()
    assert h.checker.check(leaf, issuer, leaf.serial_number, 0, None) is None
    h.routes.set("/devices.crl", 503)
    h.clock.advance(1790)  # 50s past nextUpdate: within the 1m grace period
    assert h.checker.check(leaf, issuer, leaf.serial_number, 0, None) is None  # within grace
    with capturedLogs() as events:
        h.advance(20)
    expired = h.checker.check(leaf, issuer, leaf.serial_number, 0, None)
    if policy == "reject":
        assert missing is not None and missing[0] == "crl_missing"
        assert expired is not None and expired[0] == "crl_expired"
    else:
        assert missing is None and expired is None
        assert h.checker.counts["crl_expired_accepted"] == 1
    assert any(e.get("log_level").name == "critical" for e in events)


def test_revoked_intermediate_and_unheld_intermediate(p: support.Pki) -> None:
    """Every certificate below the anchor is checked (as OpenSSL's crl_check_all): an
    intermediate whose issuer's CRL was never obtained follows the policy (reject), and is
    refused once that CRL revokes it."""
    h = Harness(p)
    inter = h.p.inter.cert
    root_name = inter.issuer.public_bytes()
    verdict = h.checker.check(inter, root_name, inter.serial_number, 1, None)
    assert verdict is not None and verdict[0] == "crl_missing"
    root_crl = make_crl(h.p.root, [inter.serial_number])
    from gateway.revocation.crl import load

    for loaded in load(pem(root_crl), [h.p.root.cert], h.clock.seconds()):
        h.cache.install(loaded, "http://ca.test/root.crl")
    verdict = h.checker.check(inter, root_name, inter.serial_number, 1, None)
    assert verdict is not None and verdict[0] == "revoked"


def test_persisted_crl_is_used_when_the_ca_is_down(p: support.Pki, tmp_path: object) -> None:
    """A restart during a CA outage loads the last good CRL from crl_cache.dir."""
    directory = os.path.join(str(tmp_path), "crl")
    h = Harness(p, globals=f"crl_cache.dir = {directory}\n")
    h.routes.set("/devices.crl", 200, h.crl([77]))
    h.service.startService()
    h.flush()
    h.service.stopService()
    files = os.listdir(os.path.join(directory, "t"))
    assert len([f for f in files if f.endswith(".crl")]) == 1
    again = Harness(p, globals=f"crl_cache.dir = {directory}\n")
    again.routes.set("/devices.crl", 500)
    again.service.startService()
    again.flush()
    assert again.status(77) == "revoked"
    assert again.state().last_result == "error"  # the fetch failed; the disk copy serves
    # Without a persisted copy, nothing is held.
    cold = Harness(p)
    cold.routes.set("/devices.crl", 500)
    cold.service.startService()
    cold.flush()
    assert cold.status(77) == "missing"
    assert cold.service.ready.called  # ready even so: the policy decides


def test_a_restart_serves_the_persisted_crl_before_the_fetch_ends(
    p: support.Pki, tmp_path: object
) -> None:
    """With crl_cache.dir holding a CRL, the listener is ready once that copy is in force:
    a slow CA (its answer hanging) does not keep devices waiting; the fetch then replaces
    it. Without a copy, ready waits for the first fetch."""
    directory = os.path.join(str(tmp_path), "crl")
    h = Harness(p, globals=f"crl_cache.dir = {directory}\n")
    h.routes.set("/devices.crl", 200, h.crl([77]))
    h.service.startService()
    h.flush()
    h.service.stopService()
    again = Harness(p, globals=f"crl_cache.dir = {directory}\n")
    again.routes.set("/devices.crl", 0)  # the CA does not answer (yet)
    again.service.startService()
    again.flush()
    assert again.routes.hanging, "the fetch is in flight"
    assert again.service.ready.called
    assert again.status(77) == "revoked" and again.status(78) == "good"
    cold = Harness(p)
    cold.routes.set("/devices.crl", 0)
    cold.service.startService()
    cold.flush()
    assert not cold.service.ready.called
    cold.advance(cold.config.http_timeout + 1)
    assert cold.service.ready.called  # the fetch timed out: the policy decides


def _kept(directory: str) -> str:
    (name,) = [f for f in os.listdir(os.path.join(directory, "t")) if f.endswith(".crl")]
    return os.path.join(directory, "t", name)


def test_a_restart_serves_the_kept_index_without_parsing(p: support.Pki, tmp_path: object) -> None:
    """The index kept beside a persisted CRL serves at once on restart (the worker does not
    run); an unchanged body from the CA is recognised by its digest (not parsed again); a
    minute later the worker parses the kept body once and the index is verified."""
    directory = os.path.join(str(tmp_path), "crl")
    h = Harness(p, globals=f"crl_cache.dir = {directory}\n")
    body = h.crl([77, 78])
    h.routes.set("/devices.crl", 200, body)
    h.service.startService()
    h.flush()
    h.service.stopService()
    assert len(h.processor.runs) == 1
    again = Harness(p, globals=f"crl_cache.dir = {directory}\n")
    again.routes.set("/devices.crl", 200, body)
    with capturedLogs() as events:
        again.service.startService()
        again.flush()
        assert again.service.ready.called
        assert again.status(77) == "revoked" and again.status(79) == "good"
        assert again.processor.runs == []  # neither the kept body nor the same fetched one
        assert again.state().last_result == "unchanged"
        again.advance(crl_kept.INDEX_VERIFY_DELAY + 1)
    assert len(again.processor.runs) == 1 and b"body_path" in again.processor.runs[0]
    assert any("kept index verified" in e["log_format"] for e in events)
    assert again.status(77) == "revoked"
    again.service.stopService()


def test_a_kept_index_that_lies_is_replaced_by_the_parsed_crl(
    p: support.Pki, tmp_path: object
) -> None:
    """An index whose record vouches for it but which does not hold what the kept CRL holds
    (written by someone else) serves only until it is verified: then the CRL as parsed
    replaces it, loudly. An index that does not match its record, or a CA bundle changed
    since it was written, is not used at all: the kept body is parsed."""
    directory = os.path.join(str(tmp_path), "crl")
    h = Harness(p, globals=f"crl_cache.dir = {directory}\n")
    h.routes.set("/devices.crl", 200, h.crl([77]))
    h.service.startService()
    h.flush()
    h.service.stopService()
    path = _kept(directory)
    # An index of an empty CRL (77 left out), recorded as if genuine.
    empty = Harness(p)
    empty.routes.set("/devices.crl", 200, empty.crl([]))
    empty.service.startService()
    empty.flush()
    (crl,) = empty.cache.loaded_from(URL)
    with open(path + ".json") as f:
        meta = json.load(f)
    chunks = worker.answer_chunks({"ok": True, "crls": [describe_loaded(crl)]}, [crl])
    forged = b"".join(bytes(c) for c in chunks)
    with open(path + ".index", "wb") as f:
        f.write(forged)
    meta["index_sha256"] = hashlib.sha256(forged).hexdigest()
    with open(path + ".json", "w") as f:
        json.dump(meta, f)
    lied = Harness(p, globals=f"crl_cache.dir = {directory}\n")
    lied.routes.set("/devices.crl", 500)
    with capturedLogs() as events:
        lied.service.startService()
        lied.flush()
        assert lied.status(77) == "good"  # the forged index serves for now
        lied.advance(crl_kept.INDEX_VERIFY_DELAY + 1)
    assert lied.status(77) == "revoked"
    assert any("does not match the CRL kept" in e["log_format"] for e in events)
    assert lied.updates  # live sessions swept against the parsed CRL
    lied.service.stopService()
    # A byte changed: the record does not vouch for it; the body is parsed at once.
    with open(path + ".index", "r+b") as f:
        f.seek(len(forged) - 1)
        f.write(b"\xff")
    broken = Harness(p, globals=f"crl_cache.dir = {directory}\n")
    broken.routes.set("/devices.crl", 500)
    broken.service.startService()
    broken.flush()
    assert broken.status(77) == "revoked" and len(broken.processor.runs) == 1
    broken.service.stopService()


def test_distribution_points_capacity_and_eviction(p: support.Pki) -> None:
    """Discovered CRL URLs are fetched; beyond capacity the least recently used is dropped."""
    h = Harness(p, crl_cache_urls="", crl_cache_from_cert="true", crl_cache_capacity="2")
    cas = [pki.make_ca(f"dp CA {i}") for i in range(3)]
    for i, ca in enumerate(cas):
        h.routes.set(f"/dp{i}.crl", 200, pem(make_crl(ca, [i + 100])))
    h.service._trust_pem = pki.cert_pem(*[ca.cert for ca in cas])
    h.service.startService()
    for i in range(3):
        leaf = pki.issue(cas[i], f"dp-leaf-{i}", crl_url=f"http://ca.test/dp{i}.crl").cert
        state = PeerVerification()
        assert (
            h.checker.check(leaf, leaf.issuer.public_bytes(), leaf.serial_number, 0, state) is None
        )
        assert state.crl_pending is not None
        assert state.crl_pending.url == f"http://ca.test/dp{i}.crl"
        h.flush()
        assert h.cache.status(leaf.issuer.public_bytes(), i + 100) == "revoked"
    assert list(h.service.sources) == ["http://ca.test/dp1.crl", "http://ca.test/dp2.crl"]
    assert h.cache.status(cas[0].cert.subject.public_bytes(), 100) == "missing"  # evicted
    # A held client is decided once the distribution point was fetched.
    issuer = cas[2].cert.subject.public_bytes()
    assert h.checker.decide_held(PendingCrl("http://ca.test/dp2.crl", issuer, 102)) == "revoked"
    assert h.checker.decide_held(PendingCrl("http://ca.test/dp2.crl", issuer, 5)) is None
    verdicts: list[Any] = []
    h.checker.decide_later(Pending(PendingCrl("http://ca.test/dp2.crl", issuer, 102))).addCallback(
        verdicts.append
    )
    assert verdicts == [("revoked", "after fetching http://ca.test/dp2.crl")]


def test_hold_is_bounded_by_the_download_timeout(p: support.Pki) -> None:
    """A held client's CRL that never arrives is decided by the policy after
    crl_cache_http_timeout plus the processing allowance, not left waiting."""
    h = Harness(p, crl_cache_urls="", crl_cache_from_cert="true", crl_cache_http_timeout="3s")
    h.routes.set("/slow.crl", 0)  # hangs
    h.service.startService()
    h.flush()
    leaf = pki.issue(h.p.inter, "held", crl_url="http://ca.test/slow.crl").cert
    issuer = leaf.issuer.public_bytes()
    verdicts: list[Any] = []
    h.checker.decide_later(Pending(PendingCrl("http://ca.test/slow.crl", issuer, 1))).addCallback(
        verdicts.append
    )
    h.advance(2)
    assert verdicts == []
    h.advance(7)
    assert verdicts == [("crl_missing", "after fetching http://ca.test/slow.crl")]


def test_alias_keys_are_accepted(p: support.Pki) -> None:
    """EMQX 4.4's code names work as aliases."""
    text = support.listener_conf(
        "t", 8883, 1883, p, {"enable_crl_check": "true", "crl_cache_urls": URL}
    )
    text += "crl_cache_refresh_interval = 2m\ncrl_cache_http_timeout = 4s\n"
    config = parse_config(text)
    crl = config.listener("t").crl
    assert crl is not None and config.globals.crl_refresh_interval == 120
    assert crl.http_timeout == 4
    assert x509  # imported for type use in helpers


def test_resumed_session_chain_is_rebuilt_and_checked(p: support.Pki) -> None:
    """A resumed session's leaf is checked through the chain rebuilt from cacertfile, and that
    chain is recorded for the live sweep."""
    from gateway.revocation.chains import IssuerIndex

    h = Harness(p)
    h.checker.issuers = IssuerIndex.of([p.root.cert, p.inter.cert])
    good = pki.issue(p.inter, "resumed-good").cert
    bad = pki.issue(p.inter, "resumed-bad").cert
    h.routes.set("/devices.crl", 200, h.crl([bad.serial_number]) + pem(make_crl(p.root, [])))
    h.service.startService()
    h.flush()
    record = PeerVerification()
    assert h.checker.check_resumed(good, good.serial_number, record) is None
    assert list(record.chain) == [
        (p.root.cert.subject.public_bytes(), p.root.cert.serial_number),
        (p.root.cert.subject.public_bytes(), p.inter.cert.serial_number),
        (p.inter.cert.subject.public_bytes(), good.serial_number),
    ]
    record = PeerVerification()
    verdict = h.checker.check_resumed(bad, bad.serial_number, record)
    assert verdict is not None and verdict[0] == "revoked" and "depth 0" in verdict[1]
    assert h.checker.chain_revoked(record.chain)
    stranger = pki.issue(pki.make_ca("elsewhere"), "stranger").cert
    verdict = h.checker.check_resumed(stranger, stranger.serial_number, PeerVerification())
    assert verdict is not None and verdict[0] == "unknown_ca"


def test_a_resumed_leafs_kept_chain_meets_the_crls_in_force_each_time(p: support.Pki) -> None:
    """The chain of a device that resumes again and again is rebuilt once (kept by leaf),
    but its revocation is decided each time from the CRLs in force: a device revoked
    between two resumptions is refused at the second."""
    from gateway.revocation.chains import IssuerIndex

    h = Harness(p, globals="crl_cache.refresh_interval = 1m\n")
    h.checker.issuers = IssuerIndex.of([p.root.cert, p.inter.cert])
    device = pki.issue(p.inter, "resumes-often").cert
    h.routes.set("/devices.crl", 200, h.crl([]) + pem(make_crl(p.root, [])))
    h.service.startService()
    h.flush()
    first, again = PeerVerification(), PeerVerification()
    assert h.checker.check_resumed(device, device.serial_number, first) is None
    assert h.checker.check_resumed(device, device.serial_number, again) is None
    assert first.chain == again.chain and len(again.chain) == 3
    chain = h.checker.issuers.chain(device)
    assert chain is not None and chain is h.checker.issuers.chain(device)  # (kept)
    h.routes.set(
        "/devices.crl",
        200,
        h.crl([device.serial_number], number=2) + pem(make_crl(p.root, [])),
    )
    h.advance(61)
    verdict = h.checker.check_resumed(device, device.serial_number, PeerVerification())
    assert verdict is not None and verdict[0] == "revoked"


def test_resumed_session_with_uncached_crl_is_held(p: support.Pki) -> None:
    """With crl_cache_from_cert, a resumed session whose leaf CRL is not cached yet is held
    like a full handshake (crl_pending set), not let through."""
    from gateway.revocation.chains import IssuerIndex

    h = Harness(p, crl_cache_urls="", crl_cache_from_cert="true")
    ca = pki.make_ca("resumed dp CA")
    h.checker.issuers = IssuerIndex.of([ca.cert])
    h.service.startService()
    leaf = pki.issue(ca, "resumed-dp", crl_url="http://ca.test/rdp.crl").cert
    record = PeerVerification()
    assert h.checker.check_resumed(leaf, leaf.serial_number, record) is None
    assert record.crl_pending is not None and record.crl_pending.url == "http://ca.test/rdp.crl"
