"""The configuration: value syntax (``values``), the key table (``keys``), the settings model
(``model``), loading and cross-key checks (``load``), and the effective text (``effective``).

Nothing here reads certificates or keys, and nothing imports the services: the TLS material
a configuration names is loaded by ``gateway.tls.material``.
"""

from gateway.config.effective import format_config
from gateway.config.keys import KEYS, Key
from gateway.config.load import load_config, parse_config
from gateway.config.model import (
    Config,
    ConnectionLimits,
    CrlSettings,
    GlobalSettings,
    ListenerSettings,
    OcspSettings,
    TlsSettings,
    UpstreamSettings,
)

__all__ = [
    "KEYS",
    "Config",
    "ConnectionLimits",
    "CrlSettings",
    "GlobalSettings",
    "Key",
    "ListenerSettings",
    "OcspSettings",
    "TlsSettings",
    "UpstreamSettings",
    "format_config",
    "load_config",
    "parse_config",
]
