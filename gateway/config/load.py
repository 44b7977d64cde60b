"""Configuration file -> ``Config``: reading lines, merging global and listener values,
cross-key checks, and building the settings model.

The format is EMQX 4's: ``key = value`` lines, ``#`` comments (at the start of a line or
after white space). A listener is declared by ``listener.ssl.<name> = [ip:]port`` (MQTT over
TLS) or ``listener.wss.<name> = [ip:]port`` (MQTT over WebSocket over TLS) and configured by
``listener.<ssl|wss>.<name>.<option>``. Relative paths are taken relative to the
directory of the configuration file.

Nothing here reads the files a configuration names: certificates and keys are read and
checked once, by ``gateway.tls.material``, which reports at the line that named them.
Every error names file, line, key and reason (see ``ConfigError``).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from gateway import files
from gateway.choices import TlsIo, Transport
from gateway.config import checks
from gateway.config.assemble import assemble
from gateway.config.checks import Line
from gateway.config.keys import (
    GLOBAL_ALIASES,
    GLOBAL_KEYS,
    KEYS,
    KEYS_BY_NAME,
    LISTENER_ALIASES,
    LISTENER_FAMILIES,
    LISTENER_KEYS,
    Key,
)
from gateway.config.model import (
    Config,
    GlobalSettings,
    ListenerSettings,
)
from gateway.config.tenants import check_overrides, tenants_of
from gateway.config.values import parse_bind
from gateway.errors import ConfigError

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def _family_of(key: str) -> Transport | None:
    """The transport of a ``listener.<family>.`` key, or None for any other key."""
    for family in LISTENER_FAMILIES:
        if key.startswith(f"listener.{family}."):
            return Transport(family)
    return None


_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def _read_lines(path: str, text: str) -> list[Line]:
    seen: dict[str, int] = {}
    out: list[Line] = []
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
        out.append(Line(key, value, number))
    return out


def _suggest(word: str, candidates: Iterable[str]) -> str:
    near = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.75)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _parse_value(path: str, entry: Line, key: Key) -> Any:
    if entry.value == "" and key.default is None and not key.required:
        return None  # an optional key written empty: unset
    try:
        return key.parse(entry.value)
    except ValueError as e:
        raise ConfigError(path, entry.line, entry.key, str(e)) from None


def load_config(path: str) -> Config:
    """Read, parse and validate a configuration file (not the files it names)."""
    try:
        data = files.read(path, MAX_CONFIG_SIZE + 1)
    except OSError as e:
        raise ConfigError(path, None, None, f"cannot read configuration: {e.strerror}") from None
    if len(data) > MAX_CONFIG_SIZE:
        raise ConfigError(path, None, None, f"larger than {MAX_CONFIG_SIZE // 1024 // 1024} MB")
    return parse_config(decode_text(path, data), path)


# A configuration file is a few kilobytes; anything near this is not one.
MAX_CONFIG_SIZE = 16 * 1024 * 1024


def decode_text(path: str, data: bytes) -> str:
    """UTF-8 text (a BOM is allowed), or a ConfigError at the line and column of the first
    byte that is not UTF-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        start = e.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data.count(b"\n", 0, start) + 1
        column = start - (data.rfind(b"\n", 0, start) + 1) + 1
        raise ConfigError(
            path,
            line,
            None,
            f"byte 0x{data[start]:02x} at column {column} is not UTF-8 "
            "(the file must be UTF-8 text)",
        ) from None


def parse_config(text: str, path: str = "<config>") -> Config:
    base_dir = os.path.dirname(os.path.abspath(path))
    lines = _read_lines(path, text)

    globals_: dict[str, tuple[Any, Line]] = {}
    declared: dict[str, tuple[tuple[str, int], Line]] = {}
    families: dict[str, Transport] = {}
    options: dict[str, dict[str, tuple[Any, Line]]] = {}
    pending_options: list[tuple[str, Transport, str, Line]] = []
    all_full_keys = list(GLOBAL_KEYS) + [
        f"listener.{family}.<name>.{k}" for family in LISTENER_FAMILIES for k in LISTENER_KEYS
    ]

    for entry in lines:
        family = _family_of(entry.key)
        if family is not None:
            rest = entry.key[len(f"listener.{family.value}.") :]
            name, dot, option = rest.partition(".")
            if not name or not _NAME_RE.match(name):
                raise ConfigError(path, entry.line, entry.key, "malformed listener name")
            if not dot:
                if name in declared:
                    first = declared[name][1]
                    raise ConfigError(
                        path,
                        entry.line,
                        entry.key,
                        f"listener {name!r} is declared at line {first.line}",
                    )
                try:
                    declared[name] = (parse_bind(entry.value), entry)
                except ValueError as e:
                    raise ConfigError(path, entry.line, entry.key, str(e)) from None
                families[name] = family
            else:
                pending_options.append((name, family, option, entry))
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

    tenant_lines: dict[str, list[tuple[str, Line]]] = {}
    for name, family, option, entry in pending_options:
        option = LISTENER_ALIASES.get(option, option)
        if option.startswith("tenant.") and name in declared and families[name] is family:
            tenant_lines.setdefault(name, []).append((option, entry))
            continue
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
                f"listener {name!r} is not declared (add 'listener.{family.value}.{name} = "
                "[ip:]port')",
            )
        if families[name] is not family:
            raise ConfigError(
                path,
                entry.line,
                entry.key,
                f"listener {name!r} is declared as listener.{families[name].value}.{name}",
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
            path, None, None, "no listener declared (add 'listener.ssl.<name> = [ip:]port')"
        )
    origins: dict[str, dict[str, tuple[int, str]]] = {}
    listeners = []
    for name, (bind, declaration) in declared.items():
        listener, origin = _build_listener(
            path, base_dir, name, families[name], bind, options.get(name, {}), globals_
        )
        if name in tenant_lines:
            listener, tenant_origin = _with_tenants(path, base_dir, listener, tenant_lines[name])
            origin.update(tenant_origin)
        elif listener.tls.sni_strict:
            strict = origin["sni_strict"]
            raise ConfigError(
                path, strict[0], strict[1], "needs tenants (tenant.<id>.server_names)"
            )
        origin[""] = (declaration.line, declaration.key)
        listeners.append(listener)
        origins[name] = origin
    checks.check_distinct_binds(path, listeners, declared)
    checks.check_no_loop(path, listeners, origins)
    settings = _build_globals(base_dir, globals_)
    checks.check_admin(path, settings, globals_, listeners)
    listeners = [resolve_tls_io(listener) for listener in listeners]
    return Config(
        path=path,
        globals=settings,
        global_lines={name: entry.line for name, (_, entry) in globals_.items()},
        listeners=tuple(listeners),
        origins=origins,
    )


def _with_tenants(
    path: str, base_dir: str, listener: ListenerSettings, lines: list[tuple[str, Line]]
) -> tuple[ListenerSettings, dict[str, tuple[int, str]]]:
    """The listener with its tenants (a certificate per server name)."""
    tenants, origin = tenants_of(path, base_dir, listener.name, lines)
    line, key = origin[lines[0][0]]
    if not listener.transport.tls:
        raise ConfigError(path, line, key, "a ws listener has no TLS: tenants need ssl or wss")
    check_overrides(path, listener, tenants, origin)
    own_cas = [t for t in tenants if t.cacertfile is not None or t.match_ca is not None]
    if own_cas and not listener.tls.verify_peer:
        first = own_cas[0]
        line, key = origin[f"tenant.{first.id}.{'cacertfile' if first.cacertfile else 'match_ca'}"]
        raise ConfigError(path, line, key, "needs verify = verify_peer on the listener")
    return attrs.evolve(listener, tenants=tenants), origin


def _build_globals(base_dir: str, globals_: Mapping[str, tuple[Any, Line]]) -> GlobalSettings:
    """The global settings: each global-only key's value (or its default) at its model path."""
    values = {}
    for key in KEYS:
        if key.listener:
            continue
        found = globals_.get(key.name)
        value = key.default if found is None else found[0]
        if key.path and value is not None:
            value = os.path.normpath(os.path.join(base_dir, value))
        values[key.attr] = value
    return GlobalSettings(**values)


def resolve_tls_io(listener: ListenerSettings) -> ListenerSettings:
    """``tls_io = auto`` made concrete: the own transport (the one way there is)."""
    if listener.tls.io is not TlsIo.AUTO:
        return listener
    return attrs.evolve(listener, tls=attrs.evolve(listener.tls, io=TlsIo.TRANSPORT))


def _build_listener(
    path: str,
    base_dir: str,
    name: str,
    family: Transport,
    bind: tuple[str, int],
    opts: Mapping[str, tuple[Any, Line]],
    globals_: Mapping[str, tuple[Any, Line]],
) -> tuple[ListenerSettings, dict[str, tuple[int, str]]]:
    """One listener's settings (its own values, else the global ones, else the defaults),
    and the line each option came from."""
    prefix = f"listener.{family.value}.{name}"
    v: dict[str, Any] = {}
    origin: dict[str, tuple[int, str]] = {}
    plain = not family.tls  # listener.ws: no TLS here (a load balancer ended it)
    for key in KEYS:
        if not key.listener:
            continue
        found = opts.get(key.name) or (globals_.get(key.name) if key.global_ else None)
        if plain and key.tls_only:
            if key.name in opts:
                line = opts[key.name][1]
                raise ConfigError(
                    path,
                    line.line,
                    line.key,
                    "a ws listener has no TLS (the load balancer in front ends it): use "
                    f"listener.wss.{name} for TLS, certificates and revocation in the gateway",
                )
            found = None  # a global TLS setting does not apply here
        if found is None:
            v[key.name] = key.default
        else:
            v[key.name] = found[0]
            origin[key.name] = (found[1].line, found[1].key)

    def fail(option: str, reason: str) -> ConfigError:
        where = origin.get(option)
        if where is None:
            return ConfigError(path, None, f"{prefix}.{option}", reason)
        return ConfigError(path, where[0], where[1], reason)

    for key in KEYS:
        if key.listener and key.required and v[key.name] is None and not (plain and key.tls_only):
            raise ConfigError(path, None, f"{prefix}.{key.name}", "required for every listener")
    if v["upstream"] is None:
        raise fail("upstream", "listener has no upstream (set it, or a global upstream)")
    if plain:
        v["verify"] = False
    verify_peer: bool = v["verify"]
    if v["fail_if_no_peer_cert"] is None:
        v["fail_if_no_peer_cert"] = verify_peer
    elif v["fail_if_no_peer_cert"] and not verify_peer:
        raise fail("fail_if_no_peer_cert", "cannot be true together with verify = verify_none")
    for key in KEYS:
        if key.listener and key.path and v[key.name] is not None:
            v[key.name] = os.path.normpath(os.path.join(base_dir, v[key.name]))
    if verify_peer and v["cacertfile"] is None:
        raise fail("verify", "verify_peer needs cacertfile (the CAs client certificates chain to)")

    if v["upstream_tls"]:
        if v["upstream_cacertfile"] is None:
            raise fail("upstream_tls", "upstream_tls needs upstream_cacertfile (the broker's CA)")
        if (v["upstream_certfile"] is None) != (v["upstream_keyfile"] is None):
            which = "upstream_keyfile" if v["upstream_certfile"] else "upstream_certfile"
            raise fail(which, "upstream_certfile and upstream_keyfile go together")
    for option in ("peer_cert_as_username", "peer_cert_as_clientid"):
        if v[option] is not None and not (verify_peer and v["fail_if_no_peer_cert"]):
            raise fail(
                option,
                "needs verify = verify_peer and fail_if_no_peer_cert = true (a device "
                "without a certificate would keep the name it claims)",
            )
    if v["ecdh_curves"] == ():
        raise fail("ecdh_curves", "at least one group is required")
    if family is Transport.WSS and v["alpn"] and "http/1.1" not in v["alpn"]:
        raise fail("alpn", "a wss listener speaks http/1.1: list it, or leave alpn unset")
    if v["check_origin_enable"] and not v["allowed_origins"]:
        raise fail("check_origin_enable", "needs allowed_origins (else every browser is refused)")
    if v["enable_crl_cache"]:
        if not verify_peer:
            raise fail("enable_crl_cache", "CRL checking needs verify = verify_peer")
        if not v["crl_cache_urls"] and not v["crl_cache_from_cert"]:
            raise fail(
                "enable_crl_cache",
                "no CRL source: set crl_cache_urls, or crl_cache_from_cert = true",
            )
    return assemble(name, family, bind, v), origin
