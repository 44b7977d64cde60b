"""The builder: a listener's parts as one frozen record, and what a reload reuses."""

from __future__ import annotations

import attrs
import pytest
from treq.testing import RequestTraversalAgent
from twisted.internet.testing import MemoryReactorClock
from twisted.web.resource import Resource

from gateway import testing as support
from gateway.build import build_parts
from gateway.demo import pki
from gateway.errors import ConfigError
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


def test_a_tenants_own_values_are_read_for_its_devices(p: support.Pki) -> None:
    """tenant.<id>.<listener key>: the tenant's devices get its identity, rates, hook and
    CRL policy; the listener's devices and the other tenants' get the listener's. Its CRL
    sources are fetched by the listener's one source, and a reload that changes them
    builds a new source."""
    files = pki.issue(p.inter, "t1", server=True, names=("t1.example",)).write(p.dir, "t1")
    tenant = {
        "tenant.t1.server_names": "t1.example",
        "tenant.t1.certfile": files[0],
        "tenant.t1.keyfile": files[1],
        "tenant.t2.server_names": "t2.example",
        "tenant.t2.certfile": files[0],
        "tenant.t2.keyfile": files[1],
    }
    own = {
        "tenant.t1.peer_cert_as_clientid": "cn",
        "tenant.t1.messages_rate": "10/s",
        "tenant.t1.auth_http_url": "http://127.0.0.1:1/t1",
        "tenant.t1.crl_cache_urls": "http://ca.test/t1.crl",
        "tenant.t1.crl_expired_policy": "accept",
    }
    reactor = MemoryReactorClock()
    first = _build(p, reactor, CRL | tenant | own)
    parts = first[0]
    assert parts.identity_for("t1").client_id == "cn"
    assert parts.identity_for("t2").client_id is None and parts.identity_for(None).client_id is None
    limits = parts.device_limits_for("t1")
    assert limits is not None and limits.messages_rate == 10.0
    assert parts.device_limits_for("t2") is None and parts.device_limits_for(None) is None
    hook = parts.authorizer_for("t1")
    assert hook is not None and hook.settings.url == "http://127.0.0.1:1/t1"
    assert parts.authorizer_for("t2") is None and parts.authorizer is None
    assert parts.session_limits.authorize  # (t1's devices are held for the hook)
    assert parts.crl is not None and set(parts.crl.sources) == {
        "http://ca.test/a.crl",
        "http://ca.test/t1.crl",
    }
    assert parts.revocation is not None
    assert [parts.revocation.reject_for(t) for t in ("t1", "t2", None)] == [False, True, True]
    slower = own | {"tenant.t1.messages_rate": "5/s"}
    same, _ = _build(p, reactor, CRL | tenant | slower, first)
    assert same.crl is parts.crl and same.authorizer_for("t1") is hook  # (not their keys)
    assert same.device_limits_for("t1").messages_rate == 5.0  # type: ignore[union-attr]
    moved = own | {"tenant.t1.crl_cache_urls": "http://ca.test/t1-new.crl"}
    again, _ = _build(p, reactor, CRL | tenant | moved, first)
    assert again.crl is not parts.crl
    assert again.crl is not None and "http://ca.test/t1-new.crl" in again.crl.sources


def test_a_tenants_own_ocsp_settings_judge_its_devices(p: support.Pki) -> None:
    """tenant.<id>.ocsp_client_failure_policy / _responder_url: its devices' OCSP checking
    (the same answers, the listener's client); a tenant line without OCSP checking on the
    listener is refused."""
    files = pki.issue(p.inter, "o1", server=True, names=("o1.example",)).write(p.dir, "o1")
    tenant = {
        "tenant.o1.server_names": "o1.example",
        "tenant.o1.certfile": files[0],
        "tenant.o1.keyfile": files[1],
        "tenant.o1.ocsp_client_failure_policy": "accept",
        "tenant.o1.ocsp_client_responder_url": "http://127.0.0.1:1/o1-ocsp",
    }
    with pytest.raises(ConfigError, match="needs ocsp_client_check on the listener"):
        _build(p, MemoryReactorClock(), tenant)
    parts, _ = _build(p, MemoryReactorClock(), tenant | {"ocsp_client_check": "leaf"})
    checker = parts.revocation
    assert checker is not None and checker.ocsp is not None
    own = checker.ocsp_for("o1")
    assert own is not None and own is not checker.ocsp and not own.reject
    assert own.answers is checker.ocsp.answers  # (one client, one cache of answers)
    assert own.settings.responder_url == "http://127.0.0.1:1/o1-ocsp"
    assert checker.ocsp_for(None) is checker.ocsp and checker.ocsp.reject
    assert checker.ocsp_for("other") is checker.ocsp
