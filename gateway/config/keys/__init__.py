"""The key table: every configuration key, where it may appear, how it parses, its default,
where it lands in the settings model, and its meaning, by concern (``tls``, ``websocket``,
``connections``, ``upstream``, ``revocation``, ``operations``). One table drives parsing, the
settings model's defaults, ``check-config``'s output, and the tests that hold
docs/configuration.md and the sample configuration to it."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.config.keys.auth import AUTH_KEYS
from gateway.config.keys.connections import (
    ACL_KEYS,
    CONNECT_KEYS,
    FRONT_KEYS,
    IDENTITY_KEYS,
    LIMIT_KEYS,
)
from gateway.config.keys.key import IDENTITY_SOURCES, LISTENER_FAMILIES, LISTENER_PREFIX, Key
from gateway.config.keys.operations import LOG_KEYS, OPERATION_KEYS, WORKER_KEYS
from gateway.config.keys.revocation import CLIENT_OCSP_KEYS, CRL_KEYS, OCSP_KEYS
from gateway.config.keys.tls import TLS_KEYS
from gateway.config.keys.upstream import UPSTREAM_CONNECT_KEYS, UPSTREAM_KEYS
from gateway.config.keys.websocket import WEBSOCKET_KEYS

# In the order check-config prints them.
KEYS: tuple[Key, ...] = (
    TLS_KEYS
    + WEBSOCKET_KEYS
    + LIMIT_KEYS
    + UPSTREAM_KEYS
    + IDENTITY_KEYS
    + ACL_KEYS
    + AUTH_KEYS
    + FRONT_KEYS
    + UPSTREAM_CONNECT_KEYS
    + CONNECT_KEYS
    + CRL_KEYS
    + OCSP_KEYS
    + CLIENT_OCSP_KEYS
    + OPERATION_KEYS
    + WORKER_KEYS
    + LOG_KEYS
)

KEYS_BY_NAME: Mapping[str, Key] = {k.name: k for k in KEYS}
ALIASES: Mapping[str, str] = {a: k.name for k in KEYS for a in k.aliases}
LISTENER_KEYS = tuple(k.name for k in KEYS if k.listener)
GLOBAL_KEYS = tuple(k.name for k in KEYS if k.global_)
LISTENER_ALIASES = {a: k for a, k in ALIASES.items() if KEYS_BY_NAME[k].listener}
GLOBAL_ALIASES = {a: k for a, k in ALIASES.items() if KEYS_BY_NAME[k].global_}


__all__ = [
    "ALIASES",
    "GLOBAL_ALIASES",
    "GLOBAL_KEYS",
    "IDENTITY_SOURCES",
    "KEYS",
    "KEYS_BY_NAME",
    "LISTENER_ALIASES",
    "LISTENER_FAMILIES",
    "LISTENER_KEYS",
    "LISTENER_PREFIX",
    "Key",
]
