"""``listener.<family>.<name>.tenant.<id>.<key>`` lines: a certificate per server name.

Each tenant names the server names it serves (``server_names``: exact names and ``*.``
wildcards of one label, as certificates match), its certificate (``certfile``,
``keyfile``) and optionally its own device CAs (``cacertfile``: its devices are judged by
those only); the client's SNI chooses it at the handshake. The listener's other settings
(revocation, limits, rules, broker) apply to every name. Refused at load, naming the line:
an unknown tenant key, a tenant without its three keys, a server name that is not a host
name, a name two tenants serve, tenants on a ws listener (no TLS there), stapling with
tenants (the staple is the listener's own certificate's).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.config.model import TenantSettings
from gateway.config.values import parse_bool, parse_host_port_list, parse_list
from gateway.errors import ConfigError

TENANT_KEYS = (
    "server_names",
    "certfile",
    "keyfile",
    "cacertfile",
    "enabled",
    "match_ca",
    "upstream",
    "acl_file",
)
REQUIRED = ("server_names", "certfile", "keyfile")
_ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def parse_server_names(text: str) -> tuple[str, ...]:
    """Host names (lower-cased), each optionally ``*.`` and at least two labels after it."""
    names = tuple(n.lower() for n in parse_list(text))
    if not names:
        raise ValueError("at least one server name")
    for name in names:
        labels = name.split(".")
        wild = labels[0] == "*"
        rest = labels[1:] if wild else labels
        if (
            len(name) > 253
            or not rest
            or (wild and len(rest) < 2)
            or not all(_LABEL_RE.match(label) for label in rest)
        ):
            raise ValueError(
                f"{name!r} is not a host name (letters, digits, '-', dots; '*.' and at "
                "least two labels for a wildcard)"
            )
    return names


def tenants_of(
    path: str,
    base_dir: str,
    listener: str,
    entries: Sequence[tuple[str, Any]],
) -> tuple[tuple[TenantSettings, ...], dict[str, tuple[int, str]]]:
    """The tenants of one listener from its ``tenant.<id>.<key>`` lines (option, Line), and
    the line each tenant option came from (``tenant.<id>.<key>`` -> (line, key))."""
    values: dict[str, dict[str, Any]] = {}
    origin: dict[str, tuple[int, str]] = {}
    for option, entry in entries:
        _, tenant, key = (option.split(".", 2) + ["", ""])[:3]
        if not _ID_RE.match(tenant) or key not in TENANT_KEYS:
            raise ConfigError(
                path,
                entry.line,
                entry.key,
                "a tenant line is tenant.<id>.<key>, the key one of "
                f"{', '.join(TENANT_KEYS)} (the listener's other settings apply to every name)",
            )
        if key in values.get(tenant, {}):
            first = origin[option][0]
            raise ConfigError(path, entry.line, entry.key, f"already set at line {first}")
        try:
            if key == "server_names":
                value: Any = parse_server_names(entry.value)
            elif key == "enabled":
                value = parse_bool(entry.value)
            elif key == "upstream":
                value = parse_host_port_list(entry.value)
            else:
                value = os.path.normpath(os.path.join(base_dir, entry.value.strip()))
        except ValueError as e:
            raise ConfigError(path, entry.line, entry.key, str(e)) from None
        values.setdefault(tenant, {})[key] = value
        origin[option] = (entry.line, entry.key)
    out = []
    served: dict[str, str] = {}
    for tenant, keys in values.items():
        missing = [k for k in REQUIRED if k not in keys]
        if missing:
            line, key = next(v for o, v in origin.items() if o.startswith(f"tenant.{tenant}."))
            raise ConfigError(path, line, key, f"tenant {tenant!r} has no {missing[0]}")
        for name in keys["server_names"]:
            if name in served:
                line, key = origin[f"tenant.{tenant}.server_names"]
                raise ConfigError(
                    path, line, key, f"{name} is served by tenant {served[name]!r} already"
                )
            served[name] = tenant
        out.append(
            TenantSettings(
                tenant,
                keys["server_names"],
                keys["certfile"],
                keys["keyfile"],
                keys.get("cacertfile"),
                keys.get("enabled", True),
                keys.get("match_ca"),
                keys.get("upstream"),
                keys.get("acl_file"),
            )
        )
    return tuple(out), origin


def tenant_for(tenants: Mapping[str, Any], sent: bytes | None) -> Any:
    """What ``tenants`` (server name -> value) holds for the name a client sent: its exact
    name, else the wildcard one label up; None for none (or no name, or not a host name)."""
    if not sent or len(sent) > 253:
        return None
    try:
        name = sent.decode("ascii").lower().rstrip(".")
    except UnicodeDecodeError:
        return None
    found = tenants.get(name)
    if found is None:
        _, dot, parent = name.partition(".")
        if dot and parent:
            found = tenants.get("*." + parent)
    return found
