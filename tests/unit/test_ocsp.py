"""OCSP: validation (sans-IO) and the stapling service (Clock, RequestTraversalAgent)."""

from __future__ import annotations

import datetime
import os
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from treq.testing import RequestTraversalAgent
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from gateway import testing as support
from gateway.demo import pki
from gateway.revocation import ocsp
from gateway.revocation.fetch import HttpFetcher
from gateway.revocation.ocsp_service import OcspStapler
from gateway.revocation.store import ocsp_path, write_atomically
from gateway.testing import ocsp as ocsp_support
from gateway.testing import prepare_text
from tests.unit.test_crl_service import Routes

RESPONDER = "http://ocsp.test/"


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> support.Pki:
    return support.make_pki(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture(scope="module")
def server(p: support.Pki) -> Any:
    return pki.issue(p.inter, "localhost", server=True, ocsp_url=RESPONDER)


def test_good_and_revoked_are_accepted(p: support.Pki, server: pki.Issued) -> None:
    """A good or revoked answer signed by the issuer validates, with its times."""
    der = ocsp_support.response(server.cert, p.inter)
    info = ocsp.validate(der, server.cert, p.inter.cert, time.time())
    assert info.status == "good" and info.der == der
    assert info.this_update < time.time() < info.next_update
    revoked = ocsp.validate(
        ocsp_support.response(server.cert, p.inter, "revoked"),
        server.cert,
        p.inter.cert,
        time.time(),
    )
    assert revoked.status == "revoked" and revoked.revocation_reason == "key_compromise"


def test_delegated_responder(p: support.Pki, server: pki.Issued) -> None:
    """A responder certificate issued by the issuer with OCSPSigning may sign."""
    delegate = pki.issue(p.inter, "ocsp responder", ocsp_signing=True)
    der = ocsp_support.response(server.cert, p.inter, signer=delegate, include_signer=True)
    assert ocsp.validate(der, server.cert, p.inter.cert, time.time()).status == "good"


def _refused(der: bytes, server: pki.Issued, p: support.Pki, **kw: Any) -> str:
    with pytest.raises(ocsp.OcspError) as info:
        ocsp.validate(der, server.cert, p.inter.cert, time.time(), **kw)
    return info.value.kind


def test_invalid_responses_are_refused(p: support.Pki, server: pki.Issued) -> None:
    """Each kind of bad answer is refused with its own reason class."""
    other_server = pki.issue(p.inter, "someone else", server=True)
    no_eku = pki.issue(p.inter, "not a responder")
    stranger_ca = pki.make_ca("stranger CA")
    foreign_delegate = pki.issue(stranger_ca, "foreign responder", ocsp_signing=True)
    expired_delegate = pki.issue(
        p.inter,
        "old responder",
        ocsp_signing=True,
        not_before=pki.now() - datetime.timedelta(days=10),
        valid_days=1,
    )
    cases = {
        "garbage": b"<html>200 OK but not OCSP</html>",
        "unsuccessful": ocsp_support.unsuccessful(),
        "wrong_certificate": ocsp_support.response(other_server.cert, p.inter),
        "unknown_status": ocsp_support.response(server.cert, p.inter, "unknown"),
        "expired": ocsp_support.response(
            server.cert,
            p.inter,
            this_update=pki.now() - datetime.timedelta(hours=3),
        ),
        "not_yet_valid": ocsp_support.response(
            server.cert, p.inter, this_update=pki.now() + datetime.timedelta(hours=1)
        ),
        "no_next_update": ocsp_support.response(server.cert, p.inter, next_update=None),
    }
    for kind, der in cases.items():
        assert _refused(der, server, p) == kind, kind
    for signer in (no_eku, foreign_delegate, expired_delegate):
        der = ocsp_support.response(server.cert, p.inter, signer=signer, include_signer=True)
        assert _refused(der, server, p) == "bad_signer", signer.cert.subject
    # Signed by a responder whose certificate is not even in the response.
    der = ocsp_support.response(server.cert, p.inter, signer=no_eku)
    assert _refused(der, server, p) == "bad_signer"


def test_cert_id_hash_is_the_responses_own(p: support.Pki, server: pki.Issued) -> None:
    """A response using SHA-256 CertIDs matches too (hashes computed with its algorithm)."""
    der = ocsp_support.response(server.cert, p.inter, algorithm=hashes.SHA256())
    assert ocsp.validate(der, server.cert, p.inter.cert, time.time()).status == "good"


def test_nonce(p: support.Pki, server: pki.Issued) -> None:
    """With a nonce sent, the answer must echo it."""
    nonce = ocsp.new_nonce()
    good = ocsp_support.response(server.cert, p.inter, nonce=nonce)
    assert ocsp.validate(good, server.cert, p.inter.cert, time.time(), nonce).status == "good"
    other = ocsp_support.response(server.cert, p.inter, nonce=b"x" * 16)
    assert _refused(other, server, p, nonce=nonce) == "bad_nonce"
    assert (
        _refused(ocsp_support.response(server.cert, p.inter), server, p, nonce=nonce) == "bad_nonce"
    )


def test_request_and_get_url(p: support.Pki, server: pki.Issued) -> None:
    """Requests use SHA-1 CertIDs; the GET form URL-encodes the base64 request."""
    from cryptography.x509 import ocsp as cocsp

    req = cocsp.load_der_ocsp_request(ocsp.build_request(server.cert, p.inter.cert))
    assert (
        isinstance(req.hash_algorithm, hashes.SHA1)
        and req.serial_number == server.cert.serial_number
    )
    url = ocsp.get_url("http://ocsp.test/", b"\xfb\xff\xfe")
    assert url == "http://ocsp.test/%2B%2F%2F%2B"
    assert ocsp.responder_url_of(server.cert) == RESPONDER


class Harness:
    def __init__(self, p: support.Pki, server: pki.Issued, tmp: str, **extra: str) -> None:
        cert, key = server.write(tmp, "server-ocsp")
        opts = {"enable_ocsp_stapling": "true", "certfile": cert, "keyfile": key}
        opts.update(extra)
        globals_ = opts.pop("globals", "")
        prepared = prepare_text(support.listener_conf("o", 8883, 1883, p, opts) + globals_)
        listener = prepared.config.listener("o")
        assert listener.ocsp is not None
        self.config = listener.ocsp
        self.cache_dir = prepared.config.globals.ocsp_cache_dir
        target = prepared.materials["o"].ocsp
        assert target is not None
        self.p, self.server = p, server
        self.clock = Clock()
        self.clock.advance(time.time())
        self.routes = Routes()
        self.stub = RequestTraversalAgent(self.routes)
        self.writes: list[str] = []

        def write(path: str, data: bytes, meta: dict[str, Any]) -> defer.Deferred[None]:
            write_atomically(path, data, meta)
            self.writes.append(path)
            return defer.succeed(None)

        self.stapler = OcspStapler(
            "o",
            self.config,
            self.cache_dir,
            self.clock,
            HttpFetcher(self.stub, self.clock),
            ocsp.OcspTarget(server.cert, p.inter.cert, RESPONDER),
            write,
        )

    def answer(self, status: int, body: bytes = b"") -> None:
        self.routes.set("/", status, body)

    def good(self, minutes: float = 60, status: str = "good") -> bytes:
        start = datetime.datetime.fromtimestamp(self.clock.seconds() - 60, datetime.timezone.utc)
        return ocsp_support.response(
            self.server.cert,
            self.p.inter,
            status,
            this_update=start,
            next_update=datetime.timedelta(minutes=minutes),
        )

    def flush(self) -> None:
        for _ in range(3):
            self.stub.flush()
            self.clock.advance(0)

    def advance(self, seconds: float) -> None:
        for _ in range(int(seconds)):
            self.clock.advance(1)
            self.flush()

    def staple(self) -> bytes:
        return self.stapler.staple(None, None)  # type: ignore[arg-type]


# RequestTraversalAgent routes POST to render_POST: answer GET and POST alike.
Routes.render_POST = Routes.render_GET  # type: ignore[attr-defined]


def test_fetch_validate_staple_and_refresh(
    p: support.Pki, server: pki.Issued, tmp_path: Any
) -> None:
    """At start the response is fetched and stapled; it is refreshed before nextUpdate."""
    h = Harness(p, server, str(tmp_path), ocsp_refresh_interval="5m")
    first = h.good(minutes=60)
    h.answer(200, first)
    h.stapler.startService()
    h.flush()
    assert h.staple() == first
    snap = h.stapler.status()
    assert snap.status == "good" and snap.last_result == "updated"
    assert snap.next_refresh is not None and snap.staples_sent == 1
    second = h.good(minutes=10)
    h.answer(200, second)
    h.advance(301)
    assert h.staple() == second
    # nextUpdate is now 4 minutes away: the next refresh comes at the latest halfway there.
    assert h.stapler.job.next_refresh is not None
    assert h.stapler.job.next_refresh - h.clock.seconds() <= 150


@pytest.mark.parametrize(
    "status, body, kind",
    [
        (404, b"", "HTTP 404"),
        (500, b"", "HTTP 500"),
        (200, b"junk", "garbage"),
        (0, b"", "timeout"),
    ],
)
def test_failures_keep_previous_until_next_update_then_drop(
    p: support.Pki, server: pki.Issued, tmp_path: Any, status: int, body: bytes, kind: str
) -> None:
    """Failures keep the previous response until its nextUpdate; then nothing is stapled."""
    h = Harness(
        p, server, str(tmp_path), ocsp_refresh_interval="1m", ocsp_refresh_http_timeout="3s"
    )
    good = h.good(minutes=4)  # thisUpdate a minute ago: nextUpdate in three minutes
    h.answer(200, good)
    h.stapler.startService()
    h.flush()
    h.answer(status, body)
    with capturedLogs() as events:
        h.advance(100)
        assert h.staple() == good
        assert kind in (h.stapler.state.last_error or "")
        h.advance(100)
    assert h.staple() == b""
    assert h.stapler.state.last_result in ("dropped", "error")
    assert h.stapler.state.status is None
    assert any("stapling stopped" in str(e.get("log_format")) for e in events)


def test_revoked_is_stapled_with_an_alarm(
    p: support.Pki, server: pki.Issued, tmp_path: Any
) -> None:
    """A valid 'revoked' answer is the truth: stapled, and logged at critical level."""
    h = Harness(p, server, str(tmp_path))
    revoked = h.good(status="revoked")
    h.answer(200, revoked)
    with capturedLogs() as events:
        h.stapler.startService()
        h.flush()
    assert h.staple() == revoked
    assert any(e["log_level"].name == "critical" and "REVOKED" in e["log_format"] for e in events)


def test_unknown_and_invalid_are_never_stapled(
    p: support.Pki, server: pki.Issued, tmp_path: Any
) -> None:
    """'unknown', wrong-serial and badly signed answers leave nothing stapled."""
    other = pki.issue(p.inter, "other")
    for body in (
        h_body
        for h_body in (
            ocsp_support.response(server.cert, p.inter, "unknown"),
            ocsp_support.response(other.cert, p.inter),
            ocsp_support.response(server.cert, p.inter, signer=pki.issue(p.inter, "x")),
        )
    ):
        h = Harness(p, server, str(tmp_path))
        h.answer(200, body)
        h.stapler.startService()
        h.flush()
        assert h.staple() == b""
        assert h.stapler.state.last_result == "error"
        h.stapler.stopService()


def test_persisted_response_serves_while_responder_is_down(
    p: support.Pki, server: pki.Issued, tmp_path: Any
) -> None:
    """The last valid response survives a restart; an expired persisted one is not used."""
    cache = os.path.join(str(tmp_path), "ocsp")
    h = Harness(p, server, str(tmp_path), globals=f"ocsp_cache.dir = {cache}\n")
    good = h.good(minutes=60)
    h.answer(200, good)
    h.stapler.startService()
    h.flush()
    h.stapler.stopService()
    assert h.writes == [os.path.join(cache, "o.ocsp.der")]
    again = Harness(p, server, str(tmp_path), globals=f"ocsp_cache.dir = {cache}\n")
    again.answer(503)
    again.stapler.startService()
    again.flush()
    assert again.staple() == good
    assert again.stapler.state.last_result == "error"  # fetch failed, disk copy serves
    later = Harness(p, server, str(tmp_path), globals=f"ocsp_cache.dir = {cache}\n")
    later.clock.advance(2 * 3600)
    later.answer(503)
    later.stapler.startService()
    later.flush()
    assert later.staple() == b""
    # Without a persisted copy and with the responder down: nothing.
    cold = Harness(p, server, str(tmp_path))
    cold.answer(503)
    cold.stapler.startService()
    cold.flush()
    assert cold.staple() == b""


def test_get_method(p: support.Pki, server: pki.Issued, tmp_path: Any) -> None:
    """ocsp_request_method = get uses the RFC 6960 A.1 URL form."""
    h = Harness(p, server, str(tmp_path), ocsp_request_method="get")
    h.routes.isLeaf = True
    h.routes.routes = {}
    good = h.good()

    def render(request: Any) -> bytes:
        assert request.method == b"GET" and len(request.path) > 20
        return good

    h.routes.render_GET = render  # type: ignore[method-assign]
    h.stapler.startService()
    h.flush()
    assert h.staple() == good


def test_missing_responder_or_issuer_is_a_start_up_error(p: support.Pki, tmp_path: Any) -> None:
    """Without an AIA URL or an issuer, the configuration names the key to set."""
    from gateway.errors import ConfigError

    bare = pki.issue(p.inter, "localhost", server=True)
    cert, key = bare.write(str(tmp_path), "bare")
    text = support.listener_conf(
        "o", 8883, 1883, p, {"enable_ocsp_stapling": "true", "certfile": cert, "keyfile": key}
    )
    with pytest.raises(ConfigError) as info:
        prepare_text(text)
    assert (
        info.value.key == "listener.ssl.o.enable_ocsp_stapling"
        and "ocsp_responder_url" in info.value.reason
    )
    text = text.replace(
        "enable_ocsp_stapling = true",
        "enable_ocsp_stapling = true\nlistener.ssl.o.ocsp_responder_url = http://x.test/",
    )
    ocsp_settings = prepare_text(text).config.listener("o").ocsp
    assert ocsp_settings is not None and ocsp_settings.responder_url == "http://x.test/"
    orphan = pki.issue(
        pki.make_ca("unrelated"), "localhost", server=True, ocsp_url="http://x.test/"
    )
    cert, key = orphan.write(str(tmp_path), "orphan")
    text = support.listener_conf(
        "o", 8883, 1883, p, {"enable_ocsp_stapling": "true", "certfile": cert, "keyfile": key}
    )
    with pytest.raises(ConfigError) as info:
        prepare_text(text)
    assert "set ocsp_issuer_pem" in info.value.reason


def test_timer_survives_unexpected_errors(
    p: support.Pki, server: pki.Issued, tmp_path: Any
) -> None:
    """An exception inside a refresh is logged; the LoopingCall keeps running and retries."""
    h = Harness(p, server, str(tmp_path), ocsp_refresh_interval="1m")
    h.answer(200, h.good())

    class Exploding:
        def fetch(self, *args: Any, **kwargs: Any) -> Any:
            raise TypeError("boom")

    h.stapler._fetcher = Exploding()  # type: ignore[assignment]
    with capturedLogs() as events:
        h.stapler.startService()
        h.flush()
        h.advance(3)
    assert h.stapler.scheduler._loop is not None and h.stapler.scheduler._loop.running
    assert any(e.get("log_failure") is not None for e in events)
    h.stapler._fetcher = HttpFetcher(h.stub, h.clock)
    h.advance(70)
    assert h.staple() != b""


def test_a_tenants_staple_is_kept_beside_its_listeners() -> None:
    """A tenant's stapler is named ``<listener>/<tenant>``: its file is in the directory
    itself, not in a subdirectory that does not exist."""
    assert ocsp_path("/var/lib/mqttgw/ocsp", "ext") == "/var/lib/mqttgw/ocsp/ext.ocsp.der"
    assert ocsp_path("/var/lib/mqttgw/ocsp", "ext/acme") == "/var/lib/mqttgw/ocsp/ext+acme.ocsp.der"
    assert ocsp_path(None, "ext/acme") is None
