"""Everything a start (and later a reload) needs, read and checked once: the configuration
and each listener's TLS material. Any problem is one ``ConfigError`` line."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from gateway.config import Config, load_config, parse_config
from gateway.tls.material import TlsMaterial, load_materials


@attrs.frozen(eq=False)
class Prepared:
    config: Config
    materials: Mapping[str, TlsMaterial]


def prepare(path: str) -> Prepared:
    """Load ``path`` and every file it names; raises ConfigError."""
    config = load_config(path)
    return Prepared(config, load_materials(config))


def prepare_text(text: str, path: str = "<config>") -> Prepared:
    """The same for configuration text (tests, the demo)."""
    config = parse_config(text, path)
    return Prepared(config, load_materials(config))
