"""Keys of the listener's TLS: its certificate and key, client certificate verification and
the offer."""

from __future__ import annotations

from gateway.choices import TlsIo
from gateway.config.keys.key import Key, format_tristate, format_verify, parse_verify
from gateway.config.profiles import GROUPS, PROFILES, TLS12_SUITES, TLS13_SUITES
from gateway.config.values import (
    choice,
    enum_of,
    format_bool,
    format_list,
    parse_bool,
    parse_list,
    parse_path,
    parse_positive_int,
    parse_tls_versions,
)

TLS_KEYS: tuple[Key, ...] = (
    Key(
        "keyfile",
        "tls.keyfile",
        parse_path,
        None,
        "PEM private key of the server certificate.",
        required=True,
        path=True,
    ),
    Key(
        "certfile",
        "tls.certfile",
        parse_path,
        None,
        "PEM server certificate followed by its intermediate chain.",
        required=True,
        path=True,
    ),
    Key(
        "cacertfile",
        "tls.cacertfile",
        parse_path,
        None,
        "PEM CA certificates (roots and intermediates) that client certificates must chain "
        "to. Required with verify = verify_peer.",
        path=True,
    ),
    Key(
        "verify",
        "tls.verify_peer",
        parse_verify,
        True,
        "verify_peer asks for and verifies a client certificate; verify_none asks for none.",
        format=format_verify,
    ),
    Key(
        "fail_if_no_peer_cert",
        "tls.fail_if_no_peer_cert",
        parse_bool,
        None,
        "Refuse clients that present no certificate. Default: true with verify_peer, false "
        "with verify_none (setting it true with verify_none is an error).",
        format=format_tristate,
    ),
    Key(
        "depth",
        "tls.depth",
        parse_positive_int,
        10,
        "Maximum number of intermediate certificates allowed between a client certificate "
        "and a trusted CA.",
    ),
    Key(
        "tls_profile",
        "tls.profile",
        enum_of(*PROFILES),
        "intermediate",
        "Mozilla's server-side TLS profile that sets tls_versions, ciphers, ecdh_curves and "
        "honor_cipher_order together: intermediate (TLS 1.3 and 1.2; TLS 1.2 only with ECDHE "
        "and AES-GCM or ChaCha20-Poly1305) or modern (TLS 1.3 only). Each of those four keys, "
        "when set, wins over the profile.",
        global_=True,
    ),
    Key(
        "tls_versions",
        "tls.versions",
        parse_tls_versions,
        None,
        "TLS versions accepted: tlsv1.3 and/or tlsv1.2 (nothing older is accepted). Unset: "
        "the profile's (intermediate: tlsv1.3, tlsv1.2; modern: tlsv1.3).",
        format=format_list,
    ),
    Key(
        "ciphers",
        "tls.ciphers",
        parse_list,
        None,
        "Cipher suites, comma-separated, in OpenSSL names. Names starting with TLS_ are TLS 1.3 "
        "suites; the others are TLS 1.2 ciphers. Each half replaces the profile's; a half not "
        "named stays the profile's. Unset: the profile's (TLS 1.3: "
        + ", ".join(TLS13_SUITES)
        + "; TLS 1.2: "
        + ", ".join(TLS12_SUITES)
        + ").",
        format=format_list,
    ),
    Key(
        "ecdh_curves",
        "tls.groups",
        parse_list,
        None,
        "Key-exchange groups (elliptic curves) for ECDHE, in preference order, OpenSSL names "
        "(X25519, P-256, P-384, X448, P-521; X25519MLKEM768 where OpenSSL has it). Unset: the "
        "profile's (" + ", ".join(GROUPS) + "). HAProxy's name, curves, is accepted too.",
        format=format_list,
        aliases=("curves",),
    ),
    Key(
        "honor_cipher_order",
        "tls.honor_cipher_order",
        parse_bool,
        None,
        "true: the server's cipher order decides; false: the client's (Mozilla's choice for "
        "both profiles: a client knows whether it has AES hardware). Unset: the profile's.",
        format=format_bool,
    ),
    Key(
        "tls_io",
        "tls.io",
        choice(TlsIo),
        TlsIo.AUTO,
        "Who moves the TLS bytes: transport (auto, the default, is the same), a transport of "
        "mqttgw's own that owns its memory BIOs (one recv per read, one write per turn, no "
        "wrapper protocol). The values of earlier versions, bio (Twisted's TLS protocol) and "
        "socket (OpenSSL on the socket), are gone: the own transport does more per "
        "CPU-second than either.",
        global_=True,
    ),
    Key(
        "sni_strict",
        "tls.sni_strict",
        parse_bool,
        False,
        "With tenants (tenant.<id>.server_names): refuse a client that sends no server name, "
        "or one no tenant serves, with the unrecognized_name alert. false: it gets the "
        "listener's own certificate.",
        format=format_bool,
    ),
)
