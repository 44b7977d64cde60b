"""Everything a start (and later a reload) needs, read and checked once: the configuration
and each listener's TLS material. Any problem is one ``ConfigError`` line."""

from __future__ import annotations

import stat
from collections.abc import Mapping

import attrs

from gateway import files
from gateway.choices import AclDefault
from gateway.config import Config, load_config
from gateway.deny import DenyError, DenyList, parse_deny
from gateway.mqtt.acl import Acl, AclError, parse_acl
from gateway.tls.material import TlsMaterial, load_materials


@attrs.frozen(eq=False)
class Prepared:
    config: Config
    materials: Mapping[str, TlsMaterial]
    admin_token: bytes | None = None
    warnings: tuple[str, ...] = ()  # besides the materials' own
    # every file read, path -> (bytes, mode): what a worker process prepares from
    files: Mapping[str, tuple[bytes, int]] = attrs.field(factory=dict, repr=False)

    def all_warnings(self) -> list[str]:
        return [w for m in self.materials.values() for w in m.warnings] + list(self.warnings)


def prepare(path: str, record: files.FileRecord | None = None) -> Prepared:
    """Load ``path`` and every file it names; raises ConfigError. With ``record``
    replaying (a worker), the files come from the master's record, not the disk."""
    record = record or files.FileRecord()
    with files.reading(record):
        prepared = prepare_config(load_config(path))
    return attrs.evolve(prepared, files=record.files)


MAX_ACL_FILE = 4 * 1024 * 1024


def _read_text(config: Config, listener: str, option: str, path: str, limit: int) -> str:
    """A rules file's text (acl_file, deny_file); ConfigError says why it cannot be read."""
    try:
        raw = files.read(path, limit + 1)
    except OSError as e:
        raise config.error(listener, option, f"cannot read {path}: {e.strerror}") from None
    if len(raw) > limit:
        raise config.error(listener, option, f"{path} is larger than {limit >> 20} MB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise config.error(listener, option, f"{path} is not UTF-8 text") from None


def _load_acl(
    config: Config, listener: str, path: str, default: str, option: str = "acl_file"
) -> Acl:
    """acl_file's rules; ConfigError names the file's line and what is wrong with it."""
    text = _read_text(config, listener, option, path, MAX_ACL_FILE)
    try:
        return parse_acl(text, default_allow=default == AclDefault.ALLOW)
    except AclError as e:
        raise config.error(listener, option, f"{path}:{e.line}: {e.why}") from None


MAX_DENY_FILE = 64 * 1024 * 1024  # about 700,000 fingerprints


def _load_deny(config: Config, listener: str, path: str) -> DenyList:
    """deny_file's entries; ConfigError names the file's line and what is wrong with it."""
    text = _read_text(config, listener, "deny_file", path, MAX_DENY_FILE)
    try:
        return parse_deny(text)
    except DenyError as e:
        raise config.error(listener, "deny_file", f"{path}:{e.line}: {e.why}") from None


MIN_TOKEN_LENGTH = 16
MAX_TOKEN_FILE = 4096


def prepare_config(config: Config) -> Prepared:
    """Read every file ``config`` names (certificates, keys, CA bundles, the token)."""
    materials = dict(load_materials(config))
    for listener in config.listeners:
        if listener.acl.file is not None:
            acl = _load_acl(config, listener.name, listener.acl.file, listener.acl.default)
            materials[listener.name] = attrs.evolve(materials[listener.name], acl=acl)
        if any(t.acl_file is not None for t in listener.tenants):
            tenants = tuple(
                attrs.evolve(
                    t,
                    acl=_load_acl(
                        config,
                        listener.name,
                        t.settings.acl_file,
                        listener.acl.default,
                        f"tenant.{t.settings.id}.acl_file",
                    ),
                )
                if t.settings.acl_file is not None
                else t
                for t in materials[listener.name].tenants
            )
            materials[listener.name] = attrs.evolve(materials[listener.name], tenants=tenants)
        if listener.identity.deny_file is not None:
            deny = _load_deny(config, listener.name, listener.identity.deny_file)
            materials[listener.name] = attrs.evolve(materials[listener.name], deny=deny)
    token, warnings = None, []
    path = config.globals.admin_token_file
    if path is not None:
        try:
            raw = files.read(path, MAX_TOKEN_FILE + 1)
            mode = files.mode(path)
        except OSError as e:
            raise config.global_error(
                "admin.token_file", f"cannot read {path}: {e.strerror}"
            ) from None
        token = raw.strip()
        if len(raw) > MAX_TOKEN_FILE or b"\n" in token or len(token) < MIN_TOKEN_LENGTH:
            raise config.global_error(
                "admin.token_file",
                f"{path} must hold one token of {MIN_TOKEN_LENGTH} to {MAX_TOKEN_FILE} "
                "characters on one line (for example: openssl rand -hex 32)",
            )
        if mode & 0o077:
            warnings.append(
                str(
                    config.global_error(
                        "admin.token_file",
                        f"warning: token file {path} is readable by others than its owner "
                        f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it",
                    )
                )
            )
    return Prepared(config, materials, token, tuple(warnings))
