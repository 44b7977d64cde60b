"""The settings model built from a listener's values: each key's value at its model path
(the key table's ``attr``), optional records left out when switched off, and where a key is
unset, the TLS profile's effective versions, suites, groups and cipher order."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.choices import Transport
from gateway.config.keys import KEYS
from gateway.config.model import (
    AclSettings,
    AuthSettings,
    ClientOcspSettings,
    ConnectionLimits,
    CrlSettings,
    FrontSettings,
    IdentitySettings,
    ListenerSettings,
    OcspSettings,
    TlsSettings,
    UpstreamSettings,
    UpstreamTls,
    WebSocketSettings,
)
from gateway.config.profiles import PROFILES, effective_ciphers


def _tree(values: Mapping[str, Any]) -> dict[str, Any]:
    """Each listener key's value at its model path, as nested dicts; a key that switches
    a record on or off (``enable_crl_cache``, ``upstream_tls``) leaves the record out when
    off."""
    tree: dict[str, Any] = {}
    switches = [k for k in KEYS if k.listener and (k.enables or k.presence)]
    for key in KEYS:
        if not key.listener or key in switches:
            continue
        node = tree
        *heads, last = key.attr.split(".")
        for head in heads:
            node = node.setdefault(head, {})
        node[last] = values[key.name]
    for key in switches:
        if not values[key.name]:
            *heads, last = key.attr.split(".")
            node = tree
            for head in heads:
                node = node[head]
            node[last] = None
    for key in KEYS:
        if key.listener and key.switch and key.section is not None:
            if values[key.name] == "off":
                tree[key.section] = None
    return tree


def assemble(
    name: str, family: Transport, bind: tuple[str, int], values: Mapping[str, Any]
) -> ListenerSettings:
    """The listener's settings from the key table's model paths; where a key is unset, the
    TLS profile gives the effective versions, suites, groups and cipher order."""
    t = _tree(values)
    tls = t["tls"]
    profile = PROFILES[tls["profile"]]
    if tls["fail_if_no_peer_cert"] is None:
        tls["fail_if_no_peer_cert"] = tls["verify_peer"]
    if tls["versions"] is None:
        tls["versions"] = profile.versions
    tls["ciphers"] = effective_ciphers(profile, tls["ciphers"])
    if tls["groups"] is None:
        tls["groups"] = profile.groups
    if tls["honor_cipher_order"] is None:
        tls["honor_cipher_order"] = profile.honor_cipher_order
    upstream = t["upstream"]
    if upstream["tls"] is not None:
        upstream["tls"] = UpstreamTls(**upstream["tls"])
    return ListenerSettings(
        name=name,
        bind=bind,
        tls=TlsSettings(**tls),
        limits=ConnectionLimits(**t["limits"]),
        upstream=UpstreamSettings(**upstream),
        crl=CrlSettings(**t["crl"]) if t["crl"] is not None else None,
        ocsp=OcspSettings(**t["ocsp"]) if t["ocsp"] is not None else None,
        client_ocsp=(
            ClientOcspSettings(**t["client_ocsp"]) if t["client_ocsp"] is not None else None
        ),
        identity=IdentitySettings(**t["identity"]),
        acl=AclSettings(**t["acl"]),
        auth=AuthSettings(**t["auth"]),
        front=FrontSettings(**t["front"]),
        log_connect=t["log_connect"],
        transport=family,
        websocket=WebSocketSettings(**t["websocket"]),
    )
