"""The configuration's cross-key checks: what no single key's parser can see (two listeners
on one port, a listener relaying to itself, an admin listener open to the network)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from gateway.config.model import GlobalSettings, ListenerSettings
from gateway.errors import ConfigError


@attrs.frozen
class Line:
    """One `key = value` line of the file, where it stands."""

    key: str
    value: str
    line: int


def check_admin(
    path: str,
    settings: GlobalSettings,
    globals_: Mapping[str, tuple[Any, Line]],
    listeners: list[ListenerSettings],
) -> None:
    """A non-loopback admin listener needs a token; it may not share a listener's port."""
    if settings.admin_listen is None:
        return
    entry = globals_["admin.listen"][1]
    host, port = settings.admin_listen
    if settings.admin_token_file is None and not _is_loopback(host):
        raise ConfigError(
            path,
            entry.line,
            entry.key,
            f"{host} is not a loopback address: set admin.token_file (anyone who reaches "
            "the admin listener could read the status and the metrics)",
        )
    for listener in listeners:
        if _reaches((host, port), listener.bind) or _reaches(listener.bind, (host, port)):
            raise ConfigError(
                path,
                entry.line,
                entry.key,
                f"port {port} is already used by listener {listener.name!r}",
            )


def _is_loopback(host: str) -> bool:
    return host.startswith("127.") or host in ("::1", "localhost")


_LOCAL_NAMES = ("localhost", "127.0.0.1", "::1", "0.0.0.0", "::")


def _reaches(upstream: tuple[str, int], bind: tuple[str, int]) -> bool:
    """Would a connection to ``upstream`` land on a listener bound to ``bind``?"""
    (up_host, up_port), (host, port) = upstream, bind
    if up_port != port:
        return False
    up_host = up_host.lower().strip("[]")
    if up_host == host:
        return True
    if host in ("0.0.0.0", "::"):
        return up_host in _LOCAL_NAMES or up_host.startswith("127.")
    return host == "127.0.0.1" and up_host == "localhost"


def check_no_loop(
    path: str, listeners: list[ListenerSettings], origins: Mapping[str, Mapping[str, Any]]
) -> None:
    """A listener (or a tenant) whose upstream is a listener of this gateway (its own
    address, most often) would relay MQTT to a TLS port of its own: a configuration error."""
    for listener in listeners:
        upstreams = [("upstream", a) for a in listener.upstream.addresses] + [
            (f"tenant.{t.id}.upstream", a) for t in listener.tenants for a in t.upstream or ()
        ]
        for other, (option, address) in ((o, u) for o in listeners for u in upstreams):
            if not _reaches(address, other.bind):
                continue
            where = origins[listener.name].get(option)
            line, key = where if where else (None, f"{listener.key_prefix}.upstream")
            whose = (
                "this listener's own address"
                if other is listener
                else f"the address of listener {other.name!r}"
            )
            host, port = address
            raise ConfigError(
                path,
                line,
                key,
                f"{host}:{port} is {whose}: the gateway would relay to itself "
                "(upstream is the broker's address)",
            )


def check_distinct_binds(
    path: str,
    listeners: list[ListenerSettings],
    declared: Mapping[str, tuple[tuple[str, int], Line]],
) -> None:
    by_port: dict[int, ListenerSettings] = {}
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
