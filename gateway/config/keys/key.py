"""A configuration key: its name, model path, parser, default, meaning and where it may
appear (listener, global)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from gateway.choices import IdentitySource
from gateway.config.values import (
    enum_of,
    format_bool,
)

LISTENER_PREFIX = "listener.ssl."
# listener.<family>.<name>: the transports a listener may be declared with.
LISTENER_FAMILIES = ("ssl", "wss", "ws")
SECTIONS = ("crl", "ocsp", "client_ocsp")  # optional records of ListenerSettings
IDENTITY_SOURCES = tuple(source.value for source in IdentitySource)


@attrs.frozen
class Key:
    """One configuration key.

    ``attr`` is the dotted path of its value in the model: from ``ListenerSettings`` for a
    listener key (``tls.certfile``; a first part ``crl`` or ``ocsp`` names a section that
    exists only when enabled), from ``GlobalSettings`` for a global-only key.
    """

    name: str
    attr: str
    parse: Callable[[str], Any]
    default: Any
    doc: str
    format: Callable[[Any], str] = str
    listener: bool = True  # listener.<ssl|wss|ws>.<name>.<key>
    global_: bool = False  # <key> at the top level
    required: bool = False
    aliases: tuple[str, ...] = ()  # other accepted names (EMQX 4.4's code uses some)
    presence: bool = False  # a boolean key whose value is whether ``attr`` is set
    path: bool = False  # a file or directory: relative to the configuration file's directory
    switch: bool = False  # inside its section: the value "off" leaves the section out

    @property
    def section(self) -> str | None:
        """``crl``, ``ocsp`` or ``client_ocsp`` for the keys of an optional section, else
        None."""
        head, dot, _ = self.attr.partition(".")
        return head if dot and head in SECTIONS else None

    @property
    def tls_only(self) -> bool:
        """Whether the key is about the devices' TLS (certificates, verification, CRL and
        OCSP, identity from the certificate): meaningless on a ``listener.ws`` (no TLS)."""
        head = self.attr.partition(".")[0]
        return head in ("tls", "identity") or self.section is not None or self.enables is not None

    @property
    def enables(self) -> str | None:
        """The section this key switches on (``enable_crl_cache`` -> ``crl``)."""
        return self.attr if self.attr in ("crl", "ocsp") else None

    def value_of(self, settings: Any) -> Any:
        """This key's effective value, read from a ListenerSettings or GlobalSettings."""
        if self.enables is not None:
            return getattr(settings, self.attr) is not None
        if self.switch and self.section is not None and getattr(settings, self.section) is None:
            return "off"
        value = settings
        for part in self.attr.split("."):
            if value is None:
                return self.default  # inside an optional record that is off
            value = getattr(value, part)
        if self.presence:
            return value is not None
        return value


def parse_verify(text: str) -> bool:
    return enum_of("verify_peer", "verify_none")(text) == "verify_peer"


def format_verify(verify_peer: bool) -> str:
    return "verify_peer" if verify_peer else "verify_none"


def format_tristate(value: bool | None) -> str:
    return "" if value is None else format_bool(value)
