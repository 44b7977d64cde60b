"""The reload decision as data: what a reload adds, removes and rebuilds, from the old and
new configuration and materials alone (no service, no reactor)."""

from __future__ import annotations

import pytest

from gateway import testing as support
from gateway.errors import ConfigError
from gateway.prepare import Prepared
from gateway.reload_plan import ListenerChange, plan_reload
from gateway.testing import prepare_text


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> support.Pki:
    return support.make_pki(str(tmp_path_factory.mktemp("pki")))


def _prepared(p: support.Pki, listeners: dict[str, dict[str, str]], extra: str = "") -> Prepared:
    text = "".join(
        support.listener_conf(name, 18000 + i, 1883, p, opts)
        for i, (name, opts) in enumerate(listeners.items())
    )
    return prepare_text(text + extra)


def _plan(old: Prepared, new: Prepared):  # type: ignore[no-untyped-def]
    return plan_reload(old.config, old.materials, new.config, new.materials)


CRL = {"enable_crl_cache": "true", "crl_cache_urls": "http://ca.test/a.crl"}


def test_nothing_changed_is_an_empty_plan(p: support.Pki) -> None:
    """The same file twice: nothing added, removed or rebuilt, no words."""
    a = _prepared(p, {"a": CRL})
    plan = _plan(a, _prepared(p, {"a": CRL}))
    assert (plan.added, plan.removed, plan.changed, plan.globals) == ((), (), (), ())
    assert not plan.admin_moved and plan.words(60) == []


def test_listeners_added_and_removed(p: support.Pki) -> None:
    """A listener only in the new file is added; one only in the old is removed (drained)."""
    plan = _plan(_prepared(p, {"a": {}, "b": {}}), _prepared(p, {"a": {}, "c": {}}))
    assert plan.added == ("c",) and plan.removed == ("b",) and plan.changed == ()
    assert plan.words(60) == ["listener b removed (drain 60s)"]


def test_a_new_crl_url_keeps_the_crls_held(p: support.Pki) -> None:
    """New CRL settings with the same CA bundle: a new CRL source that keeps the CRLs held
    (no wait for a first round); the stapler and the broker pool stay."""
    new = dict(CRL, crl_cache_urls="http://ca.test/a.crl, http://ca.test/b.crl")
    plan = _plan(_prepared(p, {"a": CRL}), _prepared(p, {"a": new}))
    assert plan.changed == (ListenerChange("a", ("crl settings",), crl=True, keep_crls=True),)
    assert not plan.changed[0].waits_for_crls
    assert plan.words(60) == ["listener a: crl settings"]


def test_turning_crl_checking_on_waits_for_the_first_round(p: support.Pki) -> None:
    """CRL checking switched on: a new, empty source; the swap waits for its first round."""
    (change,) = _plan(_prepared(p, {"a": {}}), _prepared(p, {"a": CRL})).changed
    assert change.crl and not change.keep_crls and change.waits_for_crls


def test_move_upstream_limits_and_globals(p: support.Pki) -> None:
    """A new address moves the port; a new upstream rebuilds the pool; new limits change
    only words (the next connection reads them); the global times are listed."""
    old = _prepared(p, {"a": {}})
    text = support.listener_conf("a", 18100, 1884, p, {"max_connections": "7"})
    new = prepare_text(text + "shutdown_drain = 9s\n")
    (change,) = _plan(old, new).changed
    assert change.moved and change.upstream and not change.crl and not change.ocsp
    assert change.words == ("bind", "limits settings", "upstream")
    assert _plan(old, new).globals == ("shutdown_drain 5s -> 9s",)


def test_only_the_drain_time_changed_still_reconfigures(p: support.Pki) -> None:
    """A new shutdown_drain reaches every kept listener, with no words of its own."""
    old = _prepared(p, {"a": {}})
    new = _prepared(p, {"a": {}}, "shutdown_drain = 9s\n")
    assert _plan(old, new).changed == (ListenerChange("a", ()),)


def test_websocket_settings_and_the_transport_are_a_change(p: support.Pki) -> None:
    """A reload that changes only MQTT over WebSocket's settings, the ALPN offered or the
    listener's family is applied (new parts for the next connection), never ignored."""
    a = _prepared(p, {"a": {}})
    origins = _prepared(p, {"a": {"check_origin_enable": "true", "allowed_origins": "https://x"}})
    (change,) = _plan(a, origins).changed
    assert change.words == ("websocket settings",)
    (change,) = _plan(a, _prepared(p, {"a": {"alpn": "mqtt, http/1.1"}})).changed
    assert change.words == ("tls settings",)
    wss = prepare_text(support.listener_conf("a", 18000, 1883, p, {}, family="wss"))
    (change,) = _plan(a, wss).changed
    assert change.words == ("transport",)
    # Between TLS and ws (no TLS) no reload goes: the port's factories differ.
    ws = prepare_text(support.listener_conf("a", 18000, 1883, p, {}, family="ws"))
    with pytest.raises(ConfigError, match="cannot turn a listener between ws"):
        _plan(a, ws)


def test_tls_io_auto_is_the_own_transport_everywhere(p: support.Pki) -> None:
    """tls_io = auto (the default) is the own transport, with proxy_protocol and with
    workers too; a reload that turns proxy_protocol on keeps it (the header is read by the
    same port's transports)."""
    from gateway.choices import TlsIo

    plain = _prepared(p, {"a": {}})
    assert plain.config.listener("a").tls.io is TlsIo.TRANSPORT
    proxied = _prepared(p, {"a": {"proxy_protocol": "true"}})
    assert proxied.config.listener("a").tls.io is TlsIo.TRANSPORT
    workers = _prepared(p, {"a": {}}, "workers = 2\n")
    assert workers.config.listener("a").tls.io is TlsIo.TRANSPORT
    assert _plan(plain, proxied).changed  # (proxy_protocol: the next connection's)
    assert _plan(plain, _prepared(p, {"a": {"tls_io": "transport"}})).changed == ()
