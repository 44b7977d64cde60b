"""Configuration file -> frozen values.

The format is EMQX 4's: ``key = value`` lines, ``#`` comments (at the start of a line or
after white space), durations (``500ms``, ``15s``, ``5m``, ``1h``, ``1d``), booleans
(``true/false``, ``on/off``), comma-separated lists, sizes (``64KB``). A listener is declared
by ``listener.ssl.<name> = [ip:]port`` and configured by ``listener.ssl.<name>.<option>``.
Relative paths are taken relative to the directory of the configuration file.

Every error names file, line, key and reason (see ``ConfigError``).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.errors import ConfigError

LISTENER_PREFIX = "listener.ssl."
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

# --- value parsers: each takes the raw text and returns the value or raises ValueError --


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?", text.strip())
    if not m:
        raise ValueError(f"expected a duration such as 500ms, 15s, 5m, 1h, got {text!r}")
    scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    value = float(m.group(1)) * scale
    if value <= 0:
        raise ValueError("must be greater than zero")
    return value


def format_duration(value: float) -> str:
    for unit, scale in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if value >= scale and value % scale == 0:
            return f"{int(value // scale)}{unit}"
    return f"{round(value * 1000)}ms"


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "on"):
        return True
    if lowered in ("false", "off"):
        return False
    raise ValueError(f"expected true, false, on or off, got {text!r}")


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*(b|kb|mb|gb)?", text.strip().lower())
    if not m:
        raise ValueError(f"expected a size such as 65536, 64KB or 1MB, got {text!r}")
    value = (
        int(m.group(1)) * {None: 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}[m.group(2)]
    )
    if value <= 0:
        raise ValueError("must be greater than zero")
    return value


def format_size(value: int) -> str:
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if value % scale == 0:
            return f"{value // scale}{unit}"
    return str(value)


def parse_positive_int(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise ValueError("must be greater than zero")
    return value


def parse_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _parse_port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"port must be 1-65535, got {text!r}")
    return int(text)


def parse_bind(text: str) -> tuple[str, int]:
    """``[ip:]port``; IPv6 addresses in brackets. No host names: a listener binds an address."""
    text = text.strip()
    if text.isdigit():
        return "0.0.0.0", _parse_port(text)
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([0-9.]+):(\d+)", text)
    if not m:
        raise ValueError(f"expected [ip:]port such as 8883 or 127.0.0.1:8883, got {text!r}")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    return host, _parse_port(port)


def format_bind(value: tuple[str, int]) -> str:
    host, port = value
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_host_port(text: str) -> tuple[str, int]:
    text = text.strip()
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([A-Za-z0-9.-]+):(\d+)", text)
    if not m:
        raise ValueError(f"expected host:port such as 127.0.0.1:1883, got {text!r}")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    return host, _parse_port(port)


def _enum(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.strip() not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text.strip()

    return parse


TLS_VERSIONS = ("tlsv1.3", "tlsv1.2")


def parse_tls_versions(text: str) -> tuple[str, ...]:
    versions = parse_list(text.lower())
    if not versions:
        raise ValueError("at least one TLS version is required")
    for v in versions:
        if v not in TLS_VERSIONS:
            raise ValueError(f"{v!r} is not accepted; mqttgw speaks tlsv1.3 and tlsv1.2 only")
    return tuple(sorted(set(versions), key=TLS_VERSIONS.index))


def parse_duration_or_zero(text: str) -> float:
    if text.strip() in ("0", "0s", "0ms"):
        return 0.0
    return parse_duration(text)


def parse_urls(text: str) -> tuple[str, ...]:
    urls = parse_list(text)
    for url in urls:
        if not re.match(r"^https?://[^\s/]+", url, re.I):
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
    return urls


def parse_urls_one(text: str) -> str:
    urls = parse_urls(text)
    if len(urls) != 1:
        raise ValueError("expected one http:// or https:// URL")
    return urls[0]


def parse_path(text: str) -> str:
    if not text.strip():
        raise ValueError("a path is required")
    return text.strip()


# --- the key table -------------------------------------------------------------------


@attrs.frozen
class Key:
    """One configuration key: where it may appear, how it parses, its default, its meaning."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    doc: str
    format: Callable[[Any], str] = str
    listener: bool = True  # listener.ssl.<name>.<key>
    global_: bool = False  # <key> at the top level
    required: bool = False
    aliases: tuple[str, ...] = ()  # other accepted names (EMQX 4.4's code uses some)

    @property
    def field(self) -> str:
        return self.name.replace(".", "_")


def _fmt_list(value: tuple[str, ...]) -> str:
    return ",".join(value)


def _fmt_bool(value: bool) -> str:
    return "true" if value else "false"


def _fmt_host_port(value: tuple[str, int] | None) -> str:
    return "" if value is None else format_bind(value)


KEYS: tuple[Key, ...] = (
    Key("keyfile", parse_path, None, "PEM private key of the server certificate.", required=True),
    Key(
        "certfile",
        parse_path,
        None,
        "PEM server certificate followed by its intermediate chain.",
        required=True,
    ),
    Key(
        "cacertfile",
        parse_path,
        None,
        "PEM CA certificates (roots and intermediates) that client certificates must chain "
        "to. Required with verify = verify_peer.",
    ),
    Key(
        "verify",
        _enum("verify_peer", "verify_none"),
        "verify_peer",
        "verify_peer asks for and verifies a client certificate; verify_none asks for none.",
    ),
    Key(
        "fail_if_no_peer_cert",
        parse_bool,
        None,
        "Refuse clients that present no certificate. Default: true with verify_peer, false "
        "with verify_none (setting it true with verify_none is an error).",
        format=lambda v: "" if v is None else _fmt_bool(v),
    ),
    Key(
        "depth",
        parse_positive_int,
        10,
        "Maximum number of intermediate certificates allowed between a client certificate "
        "and a trusted CA.",
    ),
    Key(
        "tls_versions",
        parse_tls_versions,
        ("tlsv1.3", "tlsv1.2"),
        "TLS versions accepted: tlsv1.3 and/or tlsv1.2. Nothing older is accepted.",
        format=_fmt_list,
    ),
    Key(
        "ciphers",
        parse_list,
        (),
        "Cipher suites, comma-separated, in OpenSSL names. Names starting with TLS_ are TLS 1.3 "
        "suites; the others are TLS 1.2 ciphers. Empty: OpenSSL's defaults.",
        format=_fmt_list,
    ),
    Key(
        "handshake_timeout",
        parse_duration,
        15.0,
        "Time allowed from TCP accept to the end of the TLS handshake.",
        format=format_duration,
    ),
    Key(
        "max_connections",
        parse_positive_int,
        100000,
        "Concurrent connections accepted on this listener; connections beyond are closed "
        "at once and logged.",
    ),
    Key(
        "upstream",
        parse_host_port,
        None,
        "The broker behind this listener, host:port, plain TCP. A listener without one "
        "uses the global upstream; having neither is an error.",
        format=_fmt_host_port,
        global_=True,
    ),
    Key(
        "upstream_connect_timeout",
        parse_duration,
        5.0,
        "Time allowed to open the TCP connection to the upstream broker. On failure the "
        "client gets CONNACK 'server unavailable'.",
        format=format_duration,
        global_=True,
    ),
    Key(
        "connect_timeout",
        parse_duration,
        10.0,
        "Time allowed after the TLS handshake for the client's complete CONNECT packet.",
        format=format_duration,
        global_=True,
    ),
    Key(
        "max_packet_size",
        parse_size,
        65536,
        "Largest CONNECT packet accepted (the only packet the gateway reads); larger ones "
        "are refused as soon as their length is known.",
        format=format_size,
        global_=True,
    ),
)

KEYS += (
    Key(
        "enable_crl_cache",
        parse_bool,
        False,
        "Check client certificates against CRLs that the gateway fetches and refreshes "
        "itself (EMQX's name; enable_crl_check is accepted too).",
        format=_fmt_bool,
        aliases=("enable_crl_check",),
    ),
    Key(
        "crl_cache_urls",
        parse_urls,
        (),
        "Comma-separated http(s) URLs of CRLs (PEM, one or more per URL, or DER). Each is "
        "fetched at start-up and then refreshed.",
        format=_fmt_list,
    ),
    Key(
        "crl_cache_http_timeout",
        parse_duration,
        15.0,
        "Time allowed for one CRL download, redirects and body included.",
        global_=True,
        format=format_duration,
    ),
    Key(
        "crl_cache.refresh_interval",
        parse_duration,
        900.0,
        "Global: how often every CRL is fetched again. A CRL whose nextUpdate comes sooner "
        "is fetched at its nextUpdate; failures are retried with backoff (10s, 20s, 40s, ... "
        "up to this interval).",
        listener=False,
        global_=True,
        aliases=("crl_cache_refresh_interval",),
        format=format_duration,
    ),
    Key(
        "crl_cache.dir",
        parse_path,
        None,
        "Global: directory where each last good CRL is written (atomically) and read back at "
        "start-up, so that a restart during a CA outage keeps enforcing revocation. Unset: "
        "nothing is persisted.",
        format=lambda v: "" if v is None else v,
        listener=False,
        global_=True,
    ),
    Key(
        "crl_cache_max_size",
        parse_size,
        128 * 1024 * 1024,
        "Largest CRL body accepted; a larger download is abandoned and the last good CRL kept.",
        format=format_size,
        global_=True,
    ),
    Key(
        "crl_expired_policy",
        _enum("reject", "accept"),
        "reject",
        "What happens when a client certificate's CRL is past its nextUpdate (plus "
        "crl_grace_period) and no newer one could be fetched, or when no CRL for its issuer "
        "was ever obtained: reject (fail closed) or accept. Logged loudly either way.",
    ),
    Key(
        "crl_grace_period",
        parse_duration_or_zero,
        0.0,
        "How long after its nextUpdate a CRL is still used as if fresh.",
        format=format_duration,
    ),
    Key(
        "crl_cache_from_cert",
        parse_bool,
        False,
        "Also fetch and refresh the CRLs named in the CRL Distribution Points of client "
        "certificates whose chain verified. A client whose CRL is not cached yet is held after "
        "its CONNECT until the CRL arrives (at most crl_cache_http_timeout), then forwarded or "
        "refused with CONNACK 'not authorized'.",
        format=_fmt_bool,
    ),
    Key(
        "crl_cache_capacity",
        parse_positive_int,
        64,
        "How many distribution-point CRLs are kept; the least recently used is dropped.",
    ),
)

KEYS += (
    Key(
        "enable_ocsp_stapling",
        parse_bool,
        False,
        "Staple a cached, verified OCSP response for the server certificate to handshakes "
        "of clients that ask for one (TLS status_request).",
        format=_fmt_bool,
    ),
    Key(
        "ocsp_responder_url",
        parse_urls_one,
        None,
        "The OCSP responder. Unset: the OCSP URL of the certificate's Authority Information "
        "Access extension (what `openssl x509 -noout -ocsp_uri` prints).",
        format=lambda v: "" if v is None else v,
    ),
    Key(
        "ocsp_issuer_pem",
        parse_path,
        None,
        "PEM certificate of the server certificate's issuer. Unset: taken from certfile's "
        "chain, else from cacertfile.",
        format=lambda v: "" if v is None else v,
    ),
    Key(
        "ocsp_refresh_interval",
        parse_duration,
        300.0,
        "How often the OCSP response is fetched again; in any case at the latest halfway to "
        "the cached response's nextUpdate. Failures are retried at 10s, 20s, 40s, ...",
        format=format_duration,
    ),
    Key(
        "ocsp_refresh_http_timeout",
        parse_duration,
        15.0,
        "Time allowed for one OCSP request, redirects and body included.",
        format=format_duration,
    ),
    Key(
        "ocsp_request_method",
        _enum("post", "get"),
        "post",
        "post: POST application/ocsp-request; get: the GET form of RFC 6960 appendix A.1 "
        "(base64 request in the URL, cacheable by HTTP proxies).",
    ),
    Key(
        "ocsp_nonce",
        parse_bool,
        False,
        "Send a nonce in each request and require the responder to echo it. Off by default: "
        "many responders answer from pre-signed caches and ignore nonces.",
        format=_fmt_bool,
    ),
    Key(
        "ocsp_cache.dir",
        parse_path,
        None,
        "Global: directory where each listener's last valid OCSP response is written "
        "(atomically) and read back at start-up if still valid, so that the first handshakes "
        "after a restart are stapled even while the responder is down. Unset: not persisted.",
        format=lambda v: "" if v is None else v,
        listener=False,
        global_=True,
    ),
    Key(
        "stats_log_interval",
        parse_duration,
        300.0,
        "Global: every this often, one log line per listener with active, accepted and refused "
        "connections (by reason), bytes relayed, CRL counts, and the longest reactor stall "
        "measured in the period (a 10 ms LoopingCall probe).",
        listener=False,
        global_=True,
        format=format_duration,
    ),
)

KEYS_BY_NAME: Mapping[str, Key] = {k.name: k for k in KEYS}
ALIASES: Mapping[str, str] = {a: k.name for k in KEYS for a in k.aliases}
LISTENER_KEYS = tuple(k.name for k in KEYS if k.listener)
GLOBAL_KEYS = tuple(k.name for k in KEYS if k.global_)
LISTENER_ALIASES = {a: k for a, k in ALIASES.items() if KEYS_BY_NAME[k].listener}
GLOBAL_ALIASES = {a: k for a, k in ALIASES.items() if KEYS_BY_NAME[k].global_}


# --- values ----------------------------------------------------------------------------


@attrs.frozen
class ListenerConfig:
    name: str
    bind: tuple[str, int]
    keyfile: str
    certfile: str
    cacertfile: str | None
    verify: str
    fail_if_no_peer_cert: bool
    depth: int
    tls_versions: tuple[str, ...]
    ciphers: tuple[str, ...]
    handshake_timeout: float
    max_connections: int
    upstream: tuple[str, int]
    upstream_connect_timeout: float
    connect_timeout: float
    max_packet_size: int
    enable_crl_cache: bool
    crl_cache_urls: tuple[str, ...]
    crl_cache_http_timeout: float
    crl_cache_refresh_interval: float
    crl_cache_dir: str | None
    crl_cache_max_size: int
    crl_expired_policy: str
    crl_grace_period: float
    crl_cache_from_cert: bool
    crl_cache_capacity: int
    enable_ocsp_stapling: bool
    ocsp_responder_url: str | None
    ocsp_issuer_pem: str | None
    ocsp_refresh_interval: float
    ocsp_refresh_http_timeout: float
    ocsp_request_method: str
    ocsp_nonce: bool
    ocsp_cache_dir: str | None
    stats_log_interval: float

    @property
    def verify_peer(self) -> bool:
        return self.verify == "verify_peer"


@attrs.frozen
class Config:
    path: str
    listeners: tuple[ListenerConfig, ...]

    def listener(self, name: str) -> ListenerConfig:
        for listener in self.listeners:
            if listener.name == name:
                return listener
        raise KeyError(name)


# --- loading ---------------------------------------------------------------------------


@attrs.frozen
class _Line:
    key: str
    value: str
    line: int


def _read_lines(path: str, text: str) -> list[_Line]:
    seen: dict[str, int] = {}
    out: list[_Line] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not stripped:
            continue
        if "=" not in stripped:
            raise ConfigError(path, number, None, f"expected 'key = value', got {stripped!r}")
        key, _, value = stripped.partition("=")
        key, value = key.strip(), value.strip()
        if not _KEY_RE.match(key):
            raise ConfigError(path, number, key or None, "malformed key")
        if key in seen:
            raise ConfigError(path, number, key, f"already set at line {seen[key]}")
        seen[key] = number
        out.append(_Line(key, value, number))
    return out


def _suggest(word: str, candidates: Iterable[str]) -> str:
    near = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.75)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _parse_value(path: str, entry: _Line, key: Key) -> Any:
    if entry.value == "" and key.default is None and not key.required:
        return None  # an optional key written empty: unset
    try:
        return key.parse(entry.value)
    except ValueError as e:
        raise ConfigError(path, entry.line, entry.key, str(e)) from None


def load_config(path: str) -> Config:
    """Read, parse and validate a configuration file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, None, None, f"cannot read configuration: {e}") from None
    return parse_config(text, path)


def parse_config(text: str, path: str = "<config>") -> Config:
    base_dir = os.path.dirname(os.path.abspath(path))
    lines = _read_lines(path, text)

    globals_: dict[str, tuple[Any, _Line]] = {}
    declared: dict[str, tuple[tuple[str, int], _Line]] = {}
    options: dict[str, dict[str, tuple[Any, _Line]]] = {}
    pending_options: list[tuple[str, str, _Line]] = []
    all_full_keys = list(GLOBAL_KEYS) + [f"{LISTENER_PREFIX}<name>.{k}" for k in LISTENER_KEYS]

    for entry in lines:
        if entry.key.startswith(LISTENER_PREFIX):
            rest = entry.key[len(LISTENER_PREFIX) :]
            name, dot, option = rest.partition(".")
            if not name or not _NAME_RE.match(name):
                raise ConfigError(path, entry.line, entry.key, "malformed listener name")
            if not dot:
                try:
                    declared[name] = (parse_bind(entry.value), entry)
                except ValueError as e:
                    raise ConfigError(path, entry.line, entry.key, str(e)) from None
            else:
                pending_options.append((name, option, entry))
        elif entry.key in GLOBAL_KEYS or entry.key in GLOBAL_ALIASES:
            name = GLOBAL_ALIASES.get(entry.key, entry.key)
            if name in globals_:
                raise ConfigError(
                    path, entry.line, entry.key, f"already set at line {globals_[name][1].line}"
                )
            globals_[name] = (_parse_value(path, entry, KEYS_BY_NAME[name]), entry)
        else:
            raise ConfigError(
                path, entry.line, entry.key, "unknown key" + _suggest(entry.key, all_full_keys)
            )

    for name, option, entry in pending_options:
        option = LISTENER_ALIASES.get(option, option)
        if option not in LISTENER_KEYS:
            raise ConfigError(
                path,
                entry.line,
                entry.key,
                "unknown listener option" + _suggest(option, LISTENER_KEYS),
            )
        if name not in declared:
            raise ConfigError(
                path,
                entry.line,
                entry.key,
                f"listener {name!r} is not declared (add '{LISTENER_PREFIX}{name} = [ip:]port')",
            )
        if option in options.get(name, {}):
            first = options[name][option][1]
            raise ConfigError(path, entry.line, entry.key, f"already set at line {first.line}")
        options.setdefault(name, {})[option] = (
            _parse_value(path, entry, KEYS_BY_NAME[option]),
            entry,
        )

    if not declared:
        raise ConfigError(
            path, None, None, f"no listener declared (add '{LISTENER_PREFIX}<name> = [ip:]port')"
        )
    listeners = tuple(
        _build_listener(path, base_dir, name, bind, options.get(name, {}), globals_)
        for name, (bind, _) in declared.items()
    )
    _check_distinct_binds(path, listeners, declared)
    return Config(path=path, listeners=listeners)


def _check_distinct_binds(
    path: str,
    listeners: tuple[ListenerConfig, ...],
    declared: Mapping[str, tuple[tuple[str, int], _Line]],
) -> None:
    by_port: dict[int, ListenerConfig] = {}
    for listener in listeners:
        other = by_port.get(listener.bind[1])
        if other is not None and (
            other.bind == listener.bind or "0.0.0.0" in (other.bind[0], listener.bind[0])
        ):
            entry = declared[listener.name][1]
            raise ConfigError(
                path,
                entry.line,
                entry.key,
                f"port {listener.bind[1]} is already used by listener {other.name!r}",
            )
        by_port[listener.bind[1]] = listener


def _build_listener(
    path: str,
    base_dir: str,
    name: str,
    bind: tuple[str, int],
    opts: Mapping[str, tuple[Any, _Line]],
    globals_: Mapping[str, tuple[Any, _Line]],
) -> ListenerConfig:
    prefix = f"{LISTENER_PREFIX}{name}"
    values: dict[str, Any] = {}
    lines: dict[str, _Line | None] = {}
    for key in KEYS:
        if key.name in opts:
            values[key.name], lines[key.name] = opts[key.name]
        elif key.global_ and key.name in globals_:
            values[key.name], lines[key.name] = globals_[key.name]
        else:
            values[key.name], lines[key.name] = key.default, None

    def fail(option: str, reason: str) -> ConfigError:
        entry = lines.get(option)
        return ConfigError(
            path,
            entry.line if entry else None,
            entry.key if entry else f"{prefix}.{option}",
            reason,
        )

    for key in KEYS:
        if key.required and values[key.name] is None:
            raise ConfigError(path, None, f"{prefix}.{key.name}", "required for every listener")
    if values["upstream"] is None:
        raise ConfigError(
            path,
            None,
            f"{prefix}.upstream",
            "listener has no upstream (set it, or a global upstream)",
        )
    verify_peer = values["verify"] == "verify_peer"
    if values["fail_if_no_peer_cert"] is None:
        values["fail_if_no_peer_cert"] = verify_peer
    elif values["fail_if_no_peer_cert"] and not verify_peer:
        raise fail("fail_if_no_peer_cert", "cannot be true together with verify = verify_none")
    for option in ("keyfile", "certfile", "cacertfile"):
        if values[option] is not None:
            values[option] = os.path.normpath(os.path.join(base_dir, values[option]))
    if verify_peer and values["cacertfile"] is None:
        raise fail("verify", "verify_peer needs cacertfile (the CAs client certificates chain to)")

    certs = _load_certificates(values["certfile"], fail("certfile", ""), "certfile")
    key = _load_private_key(values["keyfile"], fail("keyfile", ""))
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != certs[0].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise fail("keyfile", f"does not match the certificate in {values['certfile']}")
    if values["cacertfile"] is not None:
        _load_certificates(values["cacertfile"], fail("cacertfile", ""), "cacertfile")
    if values["ciphers"]:
        from gateway.tls.context import check_ciphers  # TLS details live in gateway.tls

        try:
            check_ciphers(values["ciphers"])
        except ValueError as e:
            raise fail("ciphers", str(e)) from None

    for option in ("crl_cache.dir", "ocsp_cache.dir", "ocsp_issuer_pem"):
        if values[option] is not None:
            values[option] = os.path.normpath(os.path.join(base_dir, values[option]))
    if values["enable_ocsp_stapling"]:
        _check_ocsp(values, certs, fail)
    if values["enable_crl_cache"]:
        if not verify_peer:
            raise fail("enable_crl_cache", "CRL checking needs verify = verify_peer")
        if not values["crl_cache_urls"] and not values["crl_cache_from_cert"]:
            raise fail(
                "enable_crl_cache",
                "no CRL source: set crl_cache_urls, or crl_cache_from_cert = true",
            )

    return ListenerConfig(
        name=name, bind=bind, **{KEYS_BY_NAME[k].field: v for k, v in values.items()}
    )


def _check_ocsp(
    values: dict[str, Any], certs: list[x509.Certificate], fail: Callable[[str, str], ConfigError]
) -> None:
    """Stapling needs a responder URL and the issuer; say which key to set if either is missing."""
    from gateway.revocation.ocsp import find_issuer, issuer_candidates, responder_url_of

    if values["ocsp_responder_url"] is None and responder_url_of(certs[0]) is None:
        raise fail(
            "enable_ocsp_stapling",
            "the certificate has no OCSP URL (Authority Information Access); "
            "set ocsp_responder_url",
        )
    issuer_pem = cacerts = None
    if values["ocsp_issuer_pem"] is not None:
        issuer_pem = _load_certificates(
            values["ocsp_issuer_pem"], fail("ocsp_issuer_pem", ""), "ocsp_issuer_pem"
        )
    elif values["cacertfile"] is not None:
        cacerts = _load_certificates(values["cacertfile"], fail("cacertfile", ""), "cacertfile")
    if find_issuer(certs[0], issuer_candidates(certs, issuer_pem, cacerts)) is None:
        where = "ocsp_issuer_pem" if values["ocsp_issuer_pem"] else "enable_ocsp_stapling"
        raise fail(
            where,
            f"no issuer of {certs[0].subject.rfc4514_string()} found "
            + (
                "in ocsp_issuer_pem"
                if values["ocsp_issuer_pem"]
                else "in certfile's chain or cacertfile; set ocsp_issuer_pem"
            ),
        )


def _with_reason(template: ConfigError, reason: str) -> ConfigError:
    return ConfigError(template.path, template.line, template.key, reason)


def _read_file(filename: str, template: ConfigError) -> bytes:
    try:
        with open(filename, "rb") as f:
            return f.read()
    except OSError as e:
        raise _with_reason(template, f"cannot read {filename}: {e.strerror}") from None


def _load_certificates(filename: str, template: ConfigError, what: str) -> list[x509.Certificate]:
    data = _read_file(filename, template)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise _with_reason(template, f"{filename} holds no PEM certificate")
    return certs


def _load_private_key(filename: str, template: ConfigError) -> Any:
    data = _read_file(filename, template)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise _with_reason(
            template, f"{filename} holds no usable unencrypted PEM private key ({e})"
        ) from None


def format_config(config: Config) -> str:
    """The effective configuration, defaults filled in, in the file's own syntax."""
    out = [f"# effective configuration of {config.path}"]

    def line(name: str, key: Key, listener: ListenerConfig) -> str:
        value = getattr(listener, key.field)
        return f"{name} = {'' if value is None else key.format(value)}"

    for key in KEYS:
        if not key.listener:  # global-only: the same for every listener
            out.append(line(key.name, key, config.listeners[0]))
    for listener in config.listeners:
        prefix = f"{LISTENER_PREFIX}{listener.name}"
        out.append("")
        out.append(f"{prefix} = {format_bind(listener.bind)}")
        for key in KEYS:
            if key.listener:
                out.append(line(f"{prefix}.{key.name}", key, listener))
    return "\n".join(out) + "\n"
