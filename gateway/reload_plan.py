"""The reload decision as data (sans-IO): from the running configuration and materials and
the new ones, which listeners are added, removed or changed, and for each changed one what
must be built anew (its CRL source, keeping the CRLs held or not; its stapler; its broker
pool; its port) and the words the log and ``/status`` say. Tested as data
(tests/unit/test_reload_plan.py); ``gateway.service`` carries it out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import attrs
from cryptography import x509

from gateway.config.model import Config, GlobalSettings, ListenerSettings
from gateway.config.tenants import revocation_overrides


class TlsMaterial(Protocol):
    """What the plan compares of a listener's material (``gateway.tls.material``)."""

    @property
    def chain(self) -> Sequence[x509.Certificate]: ...
    @property
    def acl(self) -> object: ...
    @property
    def deny(self) -> object: ...
    @property
    def tenants(self) -> Sequence[Any]: ...
    @property
    def ca_pem(self) -> bytes | None: ...
    @property
    def ocsp(self) -> object: ...
    @property
    def upstream(self) -> object: ...


# The listener settings compared one by one, with the word the log uses for each.
_FIELDS = (
    ("bind", "bind"),
    ("tls", "tls settings"),
    ("limits", "limits settings"),
    ("upstream", "upstream"),
    ("crl", "crl settings"),
    ("ocsp", "ocsp settings"),
    ("client_ocsp", "client ocsp settings"),
    ("identity", "identity settings"),
    ("acl", "acl settings"),
    ("auth", "auth_http settings"),
    ("front", "front settings"),
    ("transport", "transport"),
    ("websocket", "websocket settings"),
    ("tenants", "tenants"),
    ("log_connect", "log_connect"),
)
_TIMES = ("stats_log_interval", "shutdown_drain", "reload_drain")


@attrs.frozen
class ListenerChange:
    """What a reload changes in one kept listener."""

    name: str
    words: tuple[str, ...]  # what changed, for the log ("" : only the drain time)
    crl: bool = False  # a new CRL source (and checker)
    keep_crls: bool = False  # ... which keeps the CRLs held (the CA bundle is the same)
    ocsp: bool = False  # a new stapler
    client_ocsp: bool = False  # a new OCSP client (its answers are not kept)
    upstream: bool = False  # a new broker pool and connector
    moved: bool = False  # a new address: a new port, the old one closes

    @property
    def waits_for_crls(self) -> bool:
        """The new CRL source starts empty: swap once its first round is over."""
        return self.crl and not self.keep_crls


@attrs.frozen
class ReloadPlan:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[ListenerChange, ...] = ()
    globals: tuple[str, ...] = ()  # words for changed global times
    admin_moved: bool = False  # admin.listen changed: a new admin port (or none)
    admin_token: bool = False  # admin.token_file changed

    def change(self, name: str) -> ListenerChange | None:
        return next((c for c in self.changed if c.name == name), None)

    def words(self, drain: float) -> list[str]:
        """What the reload changed, in the order the log says it."""
        out = [f"listener {n} removed (drain {drain:g}s)" for n in self.removed]
        out += [f"listener {c.name}: {', '.join(c.words)}" for c in self.changed if c.words]
        return out


def _crl_globals(g: GlobalSettings) -> tuple[object, ...]:
    return (g.crl_refresh_interval, g.crl_cache_dir)


def listener_change(
    old: ListenerSettings,
    old_material: TlsMaterial,
    old_globals: GlobalSettings,
    new: ListenerSettings,
    material: TlsMaterial,
    globals_: GlobalSettings,
) -> ListenerChange:
    words = [word for field, word in _FIELDS if getattr(old, field) != getattr(new, field)]
    server = material.chain[:1] != old_material.chain[:1]  # (a ws listener has none)
    if server and material.chain and old_material.chain:
        words.append(
            f"certificate (serial {old_material.chain[0].serial_number:X} -> "
            f"{material.chain[0].serial_number:X})"
        )
    elif list(material.chain) != list(old_material.chain):
        words.append("certificate chain")
    if material.acl != old_material.acl and new.acl == old.acl:
        words.append("ACL rules")
    if material.deny != old_material.deny and new.identity == old.identity:
        words.append("deny list")
    if new.tenants == old.tenants and [t.chain for t in material.tenants] != [
        t.chain for t in old_material.tenants
    ]:
        words.append("tenant certificates")
    if [t.acl for t in material.tenants] != [t.acl for t in old_material.tenants]:
        words.append("tenant ACL rules")
    ca_same = material.ca_pem == old_material.ca_pem
    if not ca_same:
        words.append("CA bundle")
    crl_globals = _crl_globals(globals_) != _crl_globals(old_globals)
    if crl_globals and new.crl is not None:
        words.append("global CRL settings")
    ocsp_dir = globals_.ocsp_cache_dir != old_globals.ocsp_cache_dir
    if ocsp_dir and new.ocsp is not None:
        words.append("ocsp_cache.dir")
    crl = new.crl != old.crl or not ca_same or crl_globals
    # a tenant's CRL sources or policies: a new source (the CRLs kept) and checker
    crl = crl or revocation_overrides(new) != revocation_overrides(old)
    return ListenerChange(
        new.name,
        tuple(words),
        crl=crl,
        keep_crls=crl and ca_same and old.crl is not None and new.crl is not None,
        ocsp=(new.ocsp != old.ocsp or server or material.ocsp != old_material.ocsp or ocsp_dir),
        client_ocsp=new.client_ocsp != old.client_ocsp or not ca_same or ocsp_dir,
        upstream=new.upstream != old.upstream or material.upstream is not None,
        moved=new.bind != old.bind,
    )


def plan_reload(
    old: Config,
    old_materials: Mapping[str, TlsMaterial],
    new: Config,
    materials: Mapping[str, TlsMaterial],
) -> ReloadPlan:
    """The plan; ConfigError for a change no reload can make (a listener turned between
    ws and TLS)."""
    old_names = [ls.name for ls in old.listeners]
    new_names = [ls.name for ls in new.listeners]
    changed = []
    for listener in new.listeners:
        if listener.name not in old_names:
            continue
        if old.listener(listener.name).transport.tls != listener.transport.tls:
            raise new.error(
                listener.name,
                "",
                "a reload cannot turn a listener between ws (no TLS) and TLS: restart, or "
                "declare a new listener on another address",
            )
        change = listener_change(
            old.listener(listener.name),
            old_materials[listener.name],
            old.globals,
            listener,
            materials[listener.name],
            new.globals,
        )
        drain_changed = old.globals.shutdown_drain != new.globals.shutdown_drain
        if change.words or drain_changed:
            changed.append(change)
    og, ng = old.globals, new.globals
    return ReloadPlan(
        added=tuple(n for n in new_names if n not in old_names),
        removed=tuple(n for n in old_names if n not in new_names),
        changed=tuple(changed),
        globals=tuple(
            f"{key} {getattr(og, key):g}s -> {getattr(ng, key):g}s"
            for key in _TIMES
            if getattr(og, key) != getattr(ng, key)
        ),
        admin_moved=og.admin_listen != ng.admin_listen,
        admin_token=og.admin_token_file != ng.admin_token_file,
    )
