"""``listener.<family>.<name>.tenant.<id>.<key>`` lines: a certificate per server name.

Each tenant names the server names it serves (``server_names``: exact names and ``*.``
wildcards of one label, as certificates match), its certificate (``certfile``,
``keyfile``) and optionally its own device CAs (``cacertfile``: its devices are judged by
those only); the client's SNI chooses it at the handshake. A tenant may set some listener
keys for its own devices (``OVERRIDES``: its CRL sources and failure policy, identity from
the certificate, rates, the authorization hook); what it does not set it inherits from
the listener (``tenant_view``). Refused at load, naming the line: an unknown tenant key, a
tenant without its three keys, a server name that is not a host name, a name two tenants
serve, tenants on a ws listener (no TLS there), stapling with tenants (the staple is the
listener's own certificate's), a CRL key of a tenant on a listener without CRL checking.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from gateway.choices import FailurePolicy
from gateway.config.keys import KEYS_BY_NAME
from gateway.config.model import ListenerSettings, TenantSettings
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
# Listener keys a tenant may set for its own devices (the rest are the listener's).
OVERRIDES = (
    "crl_cache_urls",
    "crl_expired_policy",
    "ocsp_client_responder_url",
    "ocsp_client_failure_policy",
    "peer_cert_as_username",
    "peer_cert_as_clientid",
    "messages_rate",
    "messages_burst",
    "bytes_rate",
    "bytes_burst",
    "rate_limit_action",
    "auth_http_url",
    "auth_http_failure_policy",
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
        if not _ID_RE.match(tenant) or key not in (*TENANT_KEYS, *OVERRIDES):
            raise ConfigError(
                path,
                entry.line,
                entry.key,
                "a tenant line is tenant.<id>.<key>, the key one of "
                f"{', '.join(TENANT_KEYS + OVERRIDES)} (the listener's other settings apply "
                "to every name)",
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
            elif key in OVERRIDES:
                value = KEYS_BY_NAME[key].parse(entry.value)
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
                tuple((KEYS_BY_NAME[k].attr, v) for k, v in sorted(keys.items()) if k in OVERRIDES),
            )
        )
    return tuple(out), origin


def check_overrides(
    path: str,
    listener: ListenerSettings,
    tenants: Sequence[TenantSettings],
    origin: Mapping[str, tuple[int, str]],
) -> None:
    """A tenant's listener keys make sense on its listener: a CRL key needs CRL checking
    there, ``peer_cert_as_*`` a certificate from every device."""
    for tenant in tenants:
        for name in OVERRIDES:
            where = origin.get(f"tenant.{tenant.id}.{name}")
            if where is None:
                continue
            if name.startswith("crl_") and listener.crl is None:
                raise ConfigError(path, *where, "needs enable_crl_cache on the listener")
            if name.startswith("ocsp_client_") and listener.client_ocsp is None:
                raise ConfigError(path, *where, "needs ocsp_client_check on the listener")
            if name.startswith("peer_cert_as_") and not (
                listener.tls.verify_peer and listener.tls.fail_if_no_peer_cert
            ):
                raise ConfigError(
                    path,
                    *where,
                    "needs verify = verify_peer and fail_if_no_peer_cert = true on the "
                    "listener (a device without a certificate would keep the name it claims)",
                )


def tenant_view(listener: ListenerSettings, tenant: TenantSettings) -> ListenerSettings:
    """The listener's settings as a tenant's devices are handled: its own values (its
    ``OVERRIDES`` lines) over the listener's."""
    settings = listener
    for attr, value in tenant.overrides:
        settings = _evolved(settings, attr.split("."), value)
    return settings


def _evolved(record: Any, path: list[str], value: Any) -> Any:
    head, rest = path[0], path[1:]
    if not rest:
        return attrs.evolve(record, **{head: value})
    return attrs.evolve(record, **{head: _evolved(getattr(record, head), rest, value)})


def crl_reject(listener: ListenerSettings) -> dict[str, bool]:
    """With CRL checking: each tenant's crl_expired_policy (its own, else the listener's),
    as whether it rejects a device whose status cannot be determined."""
    return {
        t.id: view.crl.expired_policy == FailurePolicy.REJECT
        for t in listener.tenants
        if (view := tenant_view(listener, t)).crl is not None
    }


def revocation_overrides(listener: ListenerSettings) -> tuple[tuple[str, str, Any], ...]:
    """Its tenants' own CRL and client-OCSP settings, (tenant, model path, value): a reload
    that changes them builds a new CRL source and checker."""
    return tuple(
        (t.id, a, v)
        for t in listener.tenants
        for a, v in t.overrides
        if a.startswith(("crl.", "client_ocsp."))
    )


def own_crl_urls(tenant: TenantSettings) -> tuple[str, ...]:
    """The CRL sources a tenant names itself (its crl_cache_urls line; none: ())."""
    return next((v for a, v in tenant.overrides if a == "crl.urls"), ())


def crl_urls(listener: ListenerSettings) -> tuple[str, ...]:
    """Every CRL URL the listener fetches: its own, then its tenants' (once each)."""
    own = listener.crl.urls if listener.crl is not None else ()
    theirs = (url for t in listener.tenants for url in own_crl_urls(t))
    return tuple(dict.fromkeys([*own, *theirs]))


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
