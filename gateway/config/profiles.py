"""TLS profiles: versions, cipher suites, key-exchange groups and cipher order, set together.

The values are Mozilla's server-side TLS recommendations (https://wiki.mozilla.org/Security/
Server_Side_TLS, configuration generator 5.7): ``intermediate`` (TLS 1.2 and 1.3, the
default) and ``modern`` (TLS 1.3 only). The TLS 1.2 list keeps only ECDHE key exchange with
AEAD ciphers (no static RSA key exchange, no CBC, no finite-field DHE, which needs parameters
the operator would have to provide). A listener's explicit ``tls_versions``, ``ciphers``,
``ecdh_curves`` or ``honor_cipher_order`` wins over its profile.
"""

from __future__ import annotations

import attrs

TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
TLS12_SUITES = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)
GROUPS = ("X25519", "P-256", "P-384")


@attrs.frozen
class TlsProfile:
    versions: tuple[str, ...]
    ciphers: tuple[str, ...]  # TLS 1.3 suites (TLS_...) then TLS 1.2 ciphers, OpenSSL names
    groups: tuple[str, ...]
    honor_cipher_order: bool  # Mozilla: the client chooses (its hardware knows AES vs ChaCha)


PROFILES = {
    "intermediate": TlsProfile(("tlsv1.3", "tlsv1.2"), TLS13_SUITES + TLS12_SUITES, GROUPS, False),
    # The TLS 1.2 list stays so that adding tlsv1.2 to a modern listener gets safe suites.
    "modern": TlsProfile(("tlsv1.3",), TLS13_SUITES + TLS12_SUITES, GROUPS, False),
}


def split_ciphers(ciphers: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(TLS 1.3 suites, TLS 1.2 ciphers): names starting with TLS_ are TLS 1.3 suites."""
    tls13 = tuple(c for c in ciphers if c.startswith("TLS_"))
    return tls13, tuple(c for c in ciphers if not c.startswith("TLS_"))


def effective_ciphers(profile: TlsProfile, explicit: tuple[str, ...] | None) -> tuple[str, ...]:
    """The listener's suites: each half (TLS 1.3, TLS 1.2) of an explicit ``ciphers`` list
    replaces the profile's; a half it does not name stays the profile's."""
    if not explicit:
        return profile.ciphers
    tls13, tls12 = split_ciphers(explicit)
    base13, base12 = split_ciphers(profile.ciphers)
    return (tls13 or base13) + (tls12 or base12)
