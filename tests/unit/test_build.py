"""The builder: a listener's parts as one frozen record, and what a reload reuses."""

from __future__ import annotations

import attrs
import pytest
from treq.testing import RequestTraversalAgent
from twisted.internet.testing import MemoryReactorClock
from twisted.web.resource import Resource

from gateway import testing as support
from gateway.build import build_parts
from gateway.parts import ListenerEvents, ListenerParts
from gateway.reload_plan import plan_reload
from gateway.revocation.fetch import HttpFetcher
from gateway.roles import SingleProcess
from gateway.testing import InlineProcessor, prepare_text

CRL = {"enable_crl_cache": "true", "crl_cache_urls": "http://ca.test/a.crl"}


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> support.Pki:
    return support.make_pki(str(tmp_path_factory.mktemp("pki")))


HEARD: list[tuple[str, object]] = []
EVENTS = ListenerEvents(
    crl_updated=lambda crls=None: HEARD.append(("crl", crls)),
    ocsp_revoked=lambda key=None: HEARD.append(("ocsp", key)),
    staple_changed=lambda der=None: HEARD.append(("staple", der)),
)


def _role(reactor: MemoryReactorClock) -> SingleProcess:
    http = HttpFetcher(RequestTraversalAgent(Resource()), reactor)
    return SingleProcess(reactor, http, lambda work: None, InlineProcessor())


def _build(p: support.Pki, reactor: MemoryReactorClock, opts: dict[str, str], previous=None):  # type: ignore[no-untyped-def]
    prepared = prepare_text(support.listener_conf("a", 18001, 1883, p, opts))
    config = prepared.config
    old = change = None
    if previous is not None:
        old, old_prepared = previous
        plan = plan_reload(old_prepared.config, old_prepared.materials, config, prepared.materials)
        change = plan.change("a")
        assert change is not None
    parts = build_parts(
        config.listener("a"),
        prepared.materials["a"],
        config.globals,
        _role(reactor),
        reactor,
        EVENTS,
        old,
        change,
    )
    return parts, prepared


def test_the_record_holds_every_part_and_is_frozen(p: support.Pki) -> None:
    """One record: settings, material, CRL source and its checker on the same cache, a
    context, the broker pool and connector, the session limits; it cannot be changed, only
    replaced."""
    reactor = MemoryReactorClock()
    parts, prepared = _build(p, reactor, CRL)
    assert isinstance(parts, ListenerParts)
    assert parts.settings == prepared.config.listener("a")
    assert parts.crl is not None and parts.revocation is not None
    assert parts.revocation.cache is parts.crl.cache
    assert parts.stapler is None and parts.health is None  # not configured
    assert parts.session_limits.connect_timeout == parts.settings.limits.connect_timeout
    assert parts.upstream_name == "127.0.0.1:1883" and parts.name == "a"
    assert parts.services() == [parts.crl]
    # Each part is given the listener's events when it is built, not afterwards.
    assert parts.crl.on_update is EVENTS.crl_updated
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        parts.context = None  # type: ignore[misc]


def test_a_reload_reuses_what_did_not_change(p: support.Pki) -> None:
    """New limits: the CRL service and the broker pool are the same objects, the context
    is new (built for the next handshake). A new CRL URL with the same CA bundle: a new CRL
    service over the same cache (the CRLs held stay in force). A new broker: a new pool."""
    reactor = MemoryReactorClock()
    first = _build(p, reactor, CRL)
    parts, _ = first
    limits, _ = _build(p, reactor, dict(CRL, max_connections="7"), first)
    assert limits.crl is parts.crl and limits.revocation is parts.revocation
    assert limits.pool is parts.pool and limits.connector is parts.connector
    assert limits.context is not parts.context
    urls = dict(CRL, crl_cache_urls="http://ca.test/a.crl, http://ca.test/b.crl")
    more, _ = _build(p, reactor, urls, first)
    assert more.crl is not parts.crl and more.revocation is not parts.revocation
    assert more.revocation is not None and parts.revocation is not None
    assert more.revocation.cache is parts.revocation.cache
    broker, _ = _build(p, reactor, dict(CRL, upstream="127.0.0.1:1884"), first)
    assert broker.pool is not parts.pool and broker.crl is parts.crl
