"""Configuration: EMQX-style syntax, defaults, and errors that name file, line, key, reason."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from gateway import config as cfg
from gateway import testing as support
from gateway.config.profiles import PROFILES, TLS13_SUITES
from gateway.config.values import parse_bool
from gateway.demo import pki
from gateway.errors import ConfigError
from gateway.prepare import prepare
from gateway.testing import prepare_text

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> support.Pki:
    return support.make_pki(str(tmp_path_factory.mktemp("certs")))


def base(p: support.Pki, **extra: str) -> str:
    text = support.listener_conf("ext", 8883, 1883, p)
    return text + "".join(f"{k} = {v}\n" for k, v in extra.items())


def error_of(text: str, path: str = "gw.conf") -> ConfigError:
    """The error of a configuration, whether the text or the files it names are at fault."""
    with pytest.raises(ConfigError) as info:
        prepare_text(text, path)
    return info.value


def test_defaults_are_filled_in(certs: support.Pki) -> None:
    """A minimal listener gets the documented defaults."""
    listener = cfg.parse_config(base(certs)).listener("ext")
    assert listener.bind == ("127.0.0.1", 8883)
    assert listener.tls.verify_peer is True
    assert listener.tls.fail_if_no_peer_cert is True
    assert listener.tls.versions == ("tlsv1.3", "tlsv1.2")
    assert listener.limits.handshake_timeout == 15.0
    assert listener.limits.connect_timeout == 10.0
    assert listener.upstream.connect_timeout == 5.0
    assert listener.limits.max_packet_size == 65536
    assert listener.upstream.address == ("127.0.0.1", 1883)
    assert listener.crl is None and listener.ocsp is None


def test_value_syntax(certs: support.Pki) -> None:
    """Durations, booleans, sizes, lists and inline comments parse as in EMQX."""
    text = base(certs) + (
        "listener.ssl.ext.handshake_timeout = 1500ms   # comment after a value\n"
        "listener.ssl.ext.connect_timeout = 2m\n"
        "listener.ssl.ext.max_packet_size = 1MB\n"
        "listener.ssl.ext.tls_versions = tlsv1.2\n"
        "listener.ssl.ext.ciphers = TLS_AES_128_GCM_SHA256, ECDHE-ECDSA-AES128-GCM-SHA256\n"
    )
    listener = cfg.parse_config(text).listener("ext")
    assert listener.limits.handshake_timeout == 1.5
    assert listener.limits.connect_timeout == 120
    assert listener.limits.max_packet_size == 1024 * 1024
    assert listener.tls.versions == ("tlsv1.2",)
    assert listener.tls.ciphers == ("TLS_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert parse_bool("on") and not parse_bool("off")


def test_tls_profiles_and_explicit_keys(certs: support.Pki) -> None:
    """The profile sets versions, suites, groups and order; explicit keys win, each half of
    an explicit cipher list replacing only the profile's half."""
    tls = cfg.parse_config(base(certs)).listener("ext").tls
    assert tls.profile == "intermediate" and tls.versions == ("tlsv1.3", "tlsv1.2")
    assert tls.ciphers == PROFILES["intermediate"].ciphers
    assert all(c.startswith(("TLS_", "ECDHE-")) and "CBC" not in c for c in tls.ciphers)
    assert tls.groups == ("X25519", "P-256", "P-384") and tls.honor_cipher_order is False
    modern = cfg.parse_config(base(certs, tls_profile="modern")).listener("ext").tls
    assert modern.versions == ("tlsv1.3",) and modern.groups == tls.groups
    text = base(certs, tls_profile="modern") + (
        "listener.ssl.ext.tls_versions = tlsv1.3, tlsv1.2\n"
        "listener.ssl.ext.ciphers = ECDHE-ECDSA-AES256-GCM-SHA384\n"
        "listener.ssl.ext.curves = P-384\n"  # HAProxy's name
        "listener.ssl.ext.honor_cipher_order = true\n"
    )
    mixed = cfg.parse_config(text).listener("ext").tls
    assert mixed.versions == ("tlsv1.3", "tlsv1.2")
    assert mixed.ciphers == TLS13_SUITES + ("ECDHE-ECDSA-AES256-GCM-SHA384",)
    assert mixed.groups == ("P-384",) and mixed.honor_cipher_order is True


def test_global_upstream_is_inherited_and_overridable(certs: support.Pki) -> None:
    """A listener without its own upstream takes the global one."""
    text = support.listener_conf("a", 8883, 1883, certs).replace(
        "listener.ssl.a.upstream = 127.0.0.1:1883\n", ""
    )
    text += support.listener_conf("b", 8884, 1884, certs)
    text += "upstream = broker.internal:1999\nconnect_timeout = 3s\n"
    config = cfg.parse_config(text)
    assert config.listener("a").upstream.address == ("broker.internal", 1999)
    assert config.listener("b").upstream.address == ("127.0.0.1", 1884)
    assert config.listener("a").limits.connect_timeout == 3.0


@pytest.mark.parametrize(
    "extra, line_key, reason",
    [
        ("listener.ssl.ext.verfy = verify_peer", "listener.ssl.ext.verfy", "did you mean 'verify'"),
        ("upstrem = 127.0.0.1:1", "upstrem", "did you mean 'upstream'"),
        (
            "listener.ssl.ext.handshake_timeout = soon",
            "listener.ssl.ext.handshake_timeout",
            "duration",
        ),
        (
            "listener.ssl.ext.fail_if_no_peer_cert = maybe",
            "listener.ssl.ext.fail_if_no_peer_cert",
            "true, false",
        ),
        (
            "listener.ssl.ext.tls_versions = tlsv1.1",
            "listener.ssl.ext.tls_versions",
            "tlsv1.3 and tlsv1.2 only",
        ),
        (
            "listener.ssl.ext.max_connections = 0",
            "listener.ssl.ext.max_connections",
            "greater than zero",
        ),
        (
            "listener.ssl.ext.tls_io = socket",
            "listener.ssl.ext.tls_io",
            "expected one of auto, transport",
        ),
        (
            "listener.ssl.ext.ciphers = NOT-A-CIPHER",
            "listener.ssl.ext.ciphers",
            "OpenSSL accepts none",
        ),
        (
            "listener.ssl.ext.ecdh_curves = X25519, P-999",
            "listener.ssl.ext.ecdh_curves",
            "OpenSSL refuses the group list 'X25519:P-999'",
        ),
        ("tls_profile = old", "tls_profile", "expected one of intermediate, modern"),
        (
            "listener.ssl.ext.upstream_check_client_id = " + "c" * 65536,
            "listener.ssl.ext.upstream_check_client_id",
            "client id of 65536 bytes does not fit an MQTT string",
        ),
        ("listener.ssl.other.verify = verify_peer", "listener.ssl.other.verify", "not declared"),
        (
            "listener.ssl.ext.upstream = 127.0.0.1:1884",
            "listener.ssl.ext.upstream",
            "already set at line 5",
        ),
        (
            "listener.ssl.ext.verify = verify_none\nlistener.ssl.ext.fail_if_no_peer_cert = true",
            "listener.ssl.ext.fail_if_no_peer_cert",
            "verify_none",
        ),
    ],
)
def test_errors_name_file_line_key_and_reason(
    certs: support.Pki, extra: str, line_key: str, reason: str
) -> None:
    """Each bad line is reported as file:line: key: reason."""
    text = base(certs) + extra + "\n"
    err = error_of(text)
    assert err.key == line_key
    lines = text.splitlines()
    expected_line = max(i for i, line in enumerate(lines, 1) if line.startswith(line_key + " "))
    assert err.line == expected_line
    assert reason in err.reason
    assert str(err).startswith(f"gw.conf:{expected_line}: {line_key}: ")


def test_key_not_matching_certificate(certs: support.Pki, tmp_path: object) -> None:
    """A keyfile that is not the certfile's key is named with its line."""
    other_key = pki.issue(certs.inter, "other", server=True).write(str(tmp_path), "other")[1]
    text = base(certs).replace(certs.server_key, other_key)
    err = error_of(text)
    assert err.key == "listener.ssl.ext.keyfile" and err.line == 2
    assert "does not match" in err.reason


def test_missing_and_garbage_files(certs: support.Pki, tmp_path: object) -> None:
    """An unreadable file or one without PEM content is an error at its key's line."""
    err = error_of(base(certs).replace(certs.ca_file, "/nonexistent/ca.pem"))
    assert (err.key, err.line) == ("listener.ssl.ext.cacertfile", 4)
    assert "cannot read /nonexistent/ca.pem" in err.reason
    garbage = os.path.join(str(tmp_path), "garbage.pem")
    with open(garbage, "w") as f:
        f.write("not a certificate\n")
    err = error_of(base(certs).replace(certs.server_cert, garbage))
    assert (err.key, err.line) == ("listener.ssl.ext.certfile", 3)
    assert "no PEM certificate" in err.reason


def test_listener_without_upstream(certs: support.Pki) -> None:
    """Neither a listener upstream nor a global one is an error naming the key."""
    text = base(certs).replace("listener.ssl.ext.upstream = 127.0.0.1:1883\n", "")
    err = error_of(text)
    assert err.key == "listener.ssl.ext.upstream"
    assert "no upstream" in err.reason


def test_no_listener_and_bad_lines() -> None:
    """An empty file, a line without '=', and a bad bind address are refused."""
    assert "no listener" in str(error_of("# nothing\n"))
    assert str(error_of("just words\n")).startswith("gw.conf:1: expected 'key = value'")
    err = error_of("listener.ssl.x = example.com:8883\n")
    assert (err.line, err.key) == (1, "listener.ssl.x")


def test_verify_none_needs_no_ca(certs: support.Pki) -> None:
    """verify_none listeners need no cacertfile and default fail_if_no_peer_cert to false."""
    text = base(certs).replace(f"listener.ssl.ext.cacertfile = {certs.ca_file}\n", "")
    text += "listener.ssl.ext.verify = verify_none\n"
    listener = cfg.parse_config(text).listener("ext")
    assert listener.tls.fail_if_no_peer_cert is False
    assert listener.tls.cacertfile is None


def test_unreadable_config_file() -> None:
    """A missing configuration file is one clear line."""
    with pytest.raises(ConfigError) as info:
        cfg.load_config("/nonexistent/mqttgw.conf")
    assert str(info.value).startswith("/nonexistent/mqttgw.conf: cannot read configuration")


def test_sample_configuration_loads_as_is(certs: support.Pki, tmp_path: object) -> None:
    """conf/mqttgw.conf, unchanged, loads with certificates at its relative paths."""
    directory = os.path.join(str(tmp_path), "etc")
    os.makedirs(os.path.join(directory, "certs"))
    shutil.copy(os.path.join(ROOT, "conf", "mqttgw.conf"), directory)
    for src, dst in [
        (certs.server_cert, "server.pem"),
        (certs.server_key, "server.key"),
        (certs.ca_file, "ca.pem"),
    ]:
        shutil.copy(src, os.path.join(directory, "certs", dst))
    config = prepare(os.path.join(directory, "mqttgw.conf")).config
    listener = config.listener("external")
    assert listener.bind == ("0.0.0.0", 8883)
    assert listener.tls.certfile == os.path.join(directory, "certs", "server.pem")
    assert listener.upstream.address == ("127.0.0.1", 1883)
    # The effective configuration printed by check-config parses back to the same values.
    again = cfg.parse_config(cfg.format_config(config), os.path.join(directory, "x.conf"))
    assert again.listeners == config.listeners
    assert again.globals == config.globals


def test_effective_configuration_round_trips_every_key(certs: support.Pki) -> None:
    """With every optional section on, check-config's text names every key once per listener
    (or once globally) and parses back to the same settings: each key's model path resolves."""
    text = base(certs) + (
        "listener.ssl.ext.enable_crl_cache = true\n"
        "listener.ssl.ext.crl_cache_urls = http://ca.test/a.crl\n"
        "listener.ssl.ext.enable_ocsp_stapling = true\n"
        "listener.ssl.ext.ocsp_responder_url = http://ocsp.test/\n"
        "listener.ssl.ext.ocsp_client_check = chain\n"
        "crl_cache.dir = /var/lib/mqttgw/crl\nstats_log_interval = 1m\n"
    )
    config = cfg.parse_config(text, "/etc/mqttgw/gw.conf")
    shown = cfg.format_config(config)
    for key in cfg.KEYS:
        name = key.name if not key.listener else f"listener.ssl.ext.{key.name}"
        assert re.search(rf"^{re.escape(name)} =", shown, re.M), key.name
    again = cfg.parse_config(shown, "/etc/mqttgw/gw.conf")
    assert again.listeners == config.listeners and again.globals == config.globals


def test_every_key_is_documented_and_in_the_sample() -> None:
    """docs/configuration.md documents every key with its default; the sample shows each."""
    with open(os.path.join(ROOT, "docs", "configuration.md"), encoding="utf-8") as f:
        docs = f.read()
    with open(os.path.join(ROOT, "conf", "mqttgw.conf"), encoding="utf-8") as f:
        sample = f.read()
    for key in cfg.KEYS:
        row = re.search(
            rf"^\| `(listener\.ssl\.<name>\.)?{re.escape(key.name)}` \|(.*)$", docs, re.M
        )
        assert row, f"{key.name} is not documented"
        default = "" if key.default is None else key.format(key.default)
        assert f"`{default}`" in row.group(2) or key.default is None, (
            f"{key.name}: default {default!r} missing"
        )
        assert re.search(
            rf"^#? ?(listener\.ssl\.external\.)?{re.escape(key.name)} =", sample, re.M
        ), key.name


def test_every_refusal_reason_is_documented_and_exported() -> None:
    """Each Reason has its row in docs/configuration.md's "Log reason classes", a label in
    /metrics exported at 0 from the start, and a plain default text."""
    from gateway.admin.metrics import REASONS
    from gateway.reasons import Reason

    docs = open(os.path.join(os.path.dirname(__file__), "../../docs/configuration.md")).read()
    section = docs.split("## Log reason classes", 1)[1].split("\n## ", 1)[0]
    for reason in Reason:
        assert f"`{reason.value}`" in section, reason
        assert reason.value in REASONS
        assert reason.text and reason.text[0].islower()
    assert len(REASONS) == len(set(REASONS)) == len(Reason)


def test_the_settings_model_takes_its_defaults_from_the_key_table() -> None:
    """Defaults live in one place: every default a settings record has is its key's, found
    by the key's model path; and every key's model path names a field of the model."""
    import attrs

    from gateway.config import model as m

    records = {
        "": m.GlobalSettings,
        "tls.": m.TlsSettings,
        "limits.": m.ConnectionLimits,
        "upstream.": m.UpstreamSettings,
        "upstream.tls.": m.UpstreamTls,
        "identity.": m.IdentitySettings,
        "front.": m.FrontSettings,
        "crl.": m.CrlSettings,
        "ocsp.": m.OcspSettings,
    }
    keys = cfg.KEYS
    by_path = {key.attr: key for key in keys}
    checked = 0
    for prefix, record in records.items():
        for field in attrs.fields(record):
            factory = type(attrs.Factory(list))
            if field.default is attrs.NOTHING or isinstance(field.default, factory):
                continue
            key = by_path[prefix + field.name]
            if key.presence:  # a switch: off (False) is the record left out (None)
                assert field.default is None and key.default is False, key.name
            else:
                assert field.default == key.default, (record.__name__, field.name)
            checked += 1
    assert checked >= 25
    listener_fields = {f.name for f in attrs.fields(m.ListenerSettings)}
    for key in keys:
        head = key.attr.partition(".")[0]
        assert head in listener_fields or not key.listener, key.name
        if not key.listener:
            assert key.attr in {f.name for f in attrs.fields(m.GlobalSettings)}, key.name
