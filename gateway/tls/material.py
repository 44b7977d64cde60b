"""TLS material: the files a listener names, read and checked once.

``load_material`` reads the server chain and key, the CA bundle, checks the cipher list, and
finds the OCSP issuer and responder; every problem is a ``ConfigError`` at the line that
named the file (the same one-line errors ``mqttgw check-config`` prints). Contexts, the CRL
service and the OCSP stapler are then built from these objects, never from the files again:
what was checked is what serves, and a reload rebuilds exactly this.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from OpenSSL import SSL
from twisted.internet import ssl

from gateway import files
from gateway.config.model import (
    Config,
    ListenerSettings,
    TenantSettings,
    TlsSettings,
    UpstreamTls,
)
from gateway.config.profiles import split_ciphers
from gateway.deny import DenyList
from gateway.errors import ConfigError
from gateway.mqtt.acl import Acl
from gateway.revocation.chains import IssuerIndex
from gateway.revocation.ocsp import OcspTarget, find_issuer, issuer_candidates, responder_url_of
from gateway.tls.native import set_groups

# option, reason -> the error located at the line that set the option
Fail = Callable[[str, str], ConfigError]


@attrs.frozen(eq=False)
class UpstreamTrust:
    """For TLS to the broker: the CAs its certificate must chain to (a Twisted trust root)
    and the gateway's own client certificate, if any."""

    trust: Any
    client: Any  # twisted.internet.ssl.PrivateCertificate | None
    client_cert: x509.Certificate | None = None  # the same, parsed (its expiry is watched)


@attrs.frozen(eq=False)
class TenantMaterial:
    """A tenant's certificate chain and key (``tenant.<id>.certfile`` / ``keyfile``)."""

    settings: TenantSettings
    chain: tuple[x509.Certificate, ...]
    key: PrivateKeyTypes
    ca_certs: tuple[x509.Certificate, ...] = ()  # its own device CAs (none: the listener's)
    issuers: IssuerIndex | None = None  # those, indexed (a resumed session is checked)
    match_cas: tuple[x509.Certificate, ...] = ()  # match_ca: its devices on the bare name
    acl: Acl | None = None  # its acl_file's rules (None: the listener's)
    ocsp: OcspTarget | None = None  # with stapling: its certificate's responder and issuer


@attrs.frozen(eq=False)
class TlsMaterial:
    """One listener's certificates and key, loaded and checked (and its ACL file, parsed:
    the other file a listener names)."""

    chain: tuple[x509.Certificate, ...]  # certfile: the server certificate first (ws: none)
    key: PrivateKeyTypes | None  # None on a ws listener (no TLS)
    ca_certs: tuple[x509.Certificate, ...]  # cacertfile (empty with verify_none)
    # cacertfile as read, and its tenants' own CAs after it: the CRL worker's trust input
    ca_pem: bytes | None
    ocsp: OcspTarget | None
    issuers: IssuerIndex  # ca_certs indexed: rebuilds a resumed session's chain
    upstream: UpstreamTrust | None = None  # with upstream_tls: the broker's CAs, our cert
    warnings: tuple[str, ...] = ()  # file:line: key: text, for the log and check-config
    acl: Acl | None = None  # acl_file's rules
    deny: DenyList | None = None  # deny_file's certificates
    tenants: tuple[TenantMaterial, ...] = ()  # a certificate per server name
    # Revocation's issuer lookups: every device CA of the listener and of its tenants
    # (None: the listener's own, ``issuers``).
    every_issuer: IssuerIndex | None = None

    @property
    def revocation_issuers(self) -> IssuerIndex:
        return self.every_issuer or self.issuers


def apply_suites(ctx: SSL.Context, tls: TlsSettings) -> None:
    """Set the listener's cipher suites, key-exchange groups and cipher order on a context.
    ConfigError-ready: ValueError (with the key at fault as args[1]) if OpenSSL refuses."""
    tls13, tls12 = split_ciphers(tls.ciphers)
    try:
        if tls13:
            ctx.set_tls13_ciphersuites(":".join(tls13).encode("ascii"))
        if tls12:
            ctx.set_cipher_list(":".join(tls12).encode("ascii"))
    except (SSL.Error, UnicodeEncodeError) as e:
        raise ValueError(f"OpenSSL accepts none of these ciphers ({e})", "ciphers") from None
    try:
        set_groups(ctx, tls.groups)
    except ValueError as e:
        raise ValueError(str(e), "ecdh_curves") from None
    if tls.honor_cipher_order:
        ctx.set_options(SSL.OP_CIPHER_SERVER_PREFERENCE)


def _read_file(filename: str, option: str, fail: Fail) -> bytes:
    try:
        return files.read(filename)
    except OSError as e:
        raise fail(option, f"cannot read {filename}: {e.strerror}") from None


def _certificates(filename: str, option: str, fail: Fail) -> tuple[bytes, list[x509.Certificate]]:
    data = _read_file(filename, option, fail)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise fail(option, f"{filename} holds no PEM certificate")
    return data, certs


def _private_key(filename: str, fail: Fail, option: str = "keyfile") -> PrivateKeyTypes:
    data = _read_file(filename, option, fail)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise fail(
            option, f"{filename} holds no usable unencrypted PEM private key ({e})"
        ) from None


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_material(listener: ListenerSettings, fail: Fail) -> TlsMaterial:
    """Read and check everything the listener's TLS needs; ConfigError on any problem."""
    tls = listener.tls
    upstream, warnings = _upstream_material(listener, fail)
    if tls.certfile is None or tls.keyfile is None:  # a ws listener: no TLS of its own
        return TlsMaterial((), None, (), None, None, IssuerIndex.of([]), upstream, warnings)
    _, chain = _certificates(tls.certfile, "certfile", fail)
    key = _private_key(tls.keyfile, fail)
    if _spki(key.public_key()) != _spki(chain[0].public_key()):
        raise fail("keyfile", f"does not match the certificate in {tls.certfile}")
    ca_pem: bytes | None = None
    ca_certs: list[x509.Certificate] = []
    if tls.cacertfile is not None:
        ca_pem, ca_certs = _certificates(tls.cacertfile, "cacertfile", fail)
    try:
        apply_suites(SSL.Context(SSL.TLS_SERVER_METHOD), tls)
    except ValueError as e:
        raise fail(e.args[1], e.args[0]) from None
    ocsp = None
    if listener.ocsp is not None:
        ocsp = _ocsp_target(listener, chain, ca_certs or None, fail)
    warnings = tuple(str(fail("keyfile", w)) for w in _key_file_warnings(tls.keyfile)) + warnings
    tenants: list[TenantMaterial] = []
    trust_pem: list[bytes] = []  # the tenants' own CAs (revocation data is checked against)
    for tenant in listener.tenants:
        where = f"tenant.{tenant.id}."
        _, tenant_chain = _certificates(tenant.certfile, where + "certfile", fail)
        tenant_key = _private_key(tenant.keyfile, fail, where + "keyfile")
        if _spki(tenant_key.public_key()) != _spki(tenant_chain[0].public_key()):
            raise fail(where + "keyfile", f"does not match the certificate in {tenant.certfile}")
        tenant_cas: list[x509.Certificate] = []
        if tenant.cacertfile is not None:
            pem, tenant_cas = _certificates(tenant.cacertfile, where + "cacertfile", fail)
            trust_pem.append(pem)
        match_cas: list[x509.Certificate] = []
        if tenant.match_ca is not None:
            pem, match_cas = _certificates(tenant.match_ca, where + "match_ca", fail)
            trust_pem.append(pem)
            for ca in match_cas:
                if ca in ca_certs:
                    raise fail(
                        where + "match_ca", f"{_subject(ca)} is in the listener's cacertfile"
                    )
                for other in tenants:
                    if ca in other.match_cas:
                        raise fail(
                            where + "match_ca",
                            f"{_subject(ca)} selects tenant {other.settings.id!r} already",
                        )
        tenants.append(
            TenantMaterial(
                tenant,
                tuple(tenant_chain),
                tenant_key,
                tuple(tenant_cas),
                IssuerIndex.of(tenant_cas) if tenant_cas else None,
                tuple(match_cas),
                ocsp=(
                    _ocsp_target(listener, tenant_chain, None, _tenant_fail(fail, where))
                    if listener.ocsp is not None
                    else None
                ),
            )
        )
        notes = _key_file_warnings(tenant.keyfile)
        warnings += tuple(str(fail(where + "keyfile", w)) for w in notes)
    every_issuer = None
    if trust_pem:
        if listener.crl is not None or listener.client_ocsp is not None:
            _check_one_key_per_name(ca_certs, tenants, fail)
        ca_pem = b"\n".join([ca_pem or b"", *trust_pem])
        every_issuer = IssuerIndex.of(
            [*ca_certs, *(ca for t in tenants for ca in (*t.ca_certs, *t.match_cas))]
        )
    return TlsMaterial(
        tuple(chain),
        key,
        tuple(ca_certs),
        ca_pem,
        ocsp,
        IssuerIndex.of(ca_certs),
        upstream=upstream,
        warnings=warnings,
        tenants=tuple(tenants),
        every_issuer=every_issuer,
    )


def _tenant_fail(fail: Fail, where: str) -> Fail:
    """A tenant's stapling problems name its certfile (its certificate has no OCSP URL, or
    no issuer was found for it)."""

    def tenant_fail(option: str, reason: str) -> ConfigError:
        key = where + "certfile" if option == "enable_ocsp_stapling" else option
        return fail(key, f"{where}certfile: {reason}" if key == option else reason)

    return tenant_fail


def _check_one_key_per_name(
    ca_certs: list[x509.Certificate], tenants: list[TenantMaterial], fail: Fail
) -> None:
    """CRLs and OCSP answers name their issuer, not its key: with revocation checking, a
    CA name two trust domains (the listener's, each tenant's) hold with different keys
    would let one tenant's CA sign revocation data for another's devices."""
    seen: dict[x509.Name, tuple[str, bytes]] = {}
    domains = [("cacertfile", "", ca_certs)] + [
        (
            f"tenant.{t.settings.id}.{'cacertfile' if t.ca_certs else 'match_ca'}",
            t.settings.id,
            [*t.ca_certs, *t.match_cas],
        )
        for t in tenants
    ]
    for option, domain, cas in domains:
        for ca in cas:
            key = _spki(ca.public_key())
            first = seen.setdefault(ca.subject, (domain, key))
            if first[0] != domain and first[1] != key:
                whose = f"tenant {first[0]!r}" if first[0] else "the listener"
                raise fail(
                    option,
                    f"{_subject(ca)} is also a CA of {whose}, with another key: with CRL or "
                    "OCSP checking, each CA name must have one key across tenants",
                )


def _upstream_material(
    listener: ListenerSettings, fail: Fail
) -> tuple[UpstreamTrust | None, tuple[str, ...]]:
    """With upstream_tls: the broker's CAs and the gateway's client certificate, and the
    warnings about its key file."""
    if listener.upstream.tls is None:
        return None, ()
    upstream = load_upstream_tls(listener.upstream.tls, fail)
    keyfile = listener.upstream.tls.keyfile
    warnings = _key_file_warnings(keyfile) if keyfile is not None else []
    return upstream, tuple(str(fail("upstream_keyfile", w)) for w in warnings)


def load_upstream_tls(tls: UpstreamTls, fail: Fail) -> UpstreamTrust:
    """The CA certificates and the optional client certificate, read and checked once (a
    reload reads them again). ConfigError at the key that named a bad file."""

    def read(path: str, option: str) -> bytes:
        try:
            return files.read(path)
        except OSError as e:
            raise fail(option, f"cannot read {path}: {e.strerror}") from None

    pem = read(tls.cacertfile, "upstream_cacertfile")
    try:
        cas = x509.load_pem_x509_certificates(pem)
    except ValueError:
        cas = []
    if not cas:
        raise fail("upstream_cacertfile", f"{tls.cacertfile} holds no PEM certificate")
    client = None
    if tls.certfile is not None and tls.keyfile is not None:
        chain = read(tls.certfile, "upstream_certfile")
        key = read(tls.keyfile, "upstream_keyfile")
        try:
            client = ssl.PrivateCertificate.loadPEM(chain + b"\n" + key)
        except Exception as e:
            raise fail("upstream_keyfile", f"not a usable certificate and key ({e})") from None
    trust = ssl.trustRootFromCertificates(
        [ssl.Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM)) for c in cas]
    )
    parsed = client.original.to_cryptography() if client is not None else None
    return UpstreamTrust(trust, client, parsed)


def _key_file_warnings(filename: str) -> list[str]:
    """As ssh does: a private key others may read is named, with its mode (not refused:
    a group-readable key for a service group is a deliberate set-up)."""
    try:
        mode = files.mode(filename)
    except OSError:
        return []
    readers = [who for who, bit in (("group", 0o040), ("others", 0o004)) if mode & bit]
    if not readers:
        return []
    return [
        f"warning: private key {filename} is readable by {' and '.join(readers)} "
        f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it"
    ]


def _ocsp_target(
    listener: ListenerSettings,
    chain: list[x509.Certificate],
    cacerts: list[x509.Certificate] | None,
    fail: Fail,
) -> OcspTarget:
    """Stapling needs a responder URL and the issuer; say which key to set if either is missing."""
    assert listener.ocsp is not None
    responder = listener.ocsp.responder_url or responder_url_of(chain[0])
    if responder is None:
        raise fail(
            "enable_ocsp_stapling",
            "the certificate has no OCSP URL (Authority Information Access); "
            "set ocsp_responder_url",
        )
    issuer_pem = None
    if listener.ocsp.issuer_pem is not None:
        _, issuer_pem = _certificates(listener.ocsp.issuer_pem, "ocsp_issuer_pem", fail)
    issuer = find_issuer(chain[0], issuer_candidates(chain, issuer_pem, cacerts))
    if issuer is None:
        explicit = listener.ocsp.issuer_pem is not None
        raise fail(
            "ocsp_issuer_pem" if explicit else "enable_ocsp_stapling",
            f"no issuer of {chain[0].subject.rfc4514_string()} found "
            + (
                "in ocsp_issuer_pem"
                if explicit
                else "in certfile's chain or cacertfile; set ocsp_issuer_pem"
            ),
        )
    return OcspTarget(chain[0], issuer, responder)


def load_materials(config: Config) -> dict[str, TlsMaterial]:
    """Every listener's material, by listener name."""
    out = {}
    for listener in config.listeners:

        def fail(option: str, reason: str, name: str = listener.name) -> ConfigError:
            return config.error(name, option, reason)

        out[listener.name] = load_material(listener, fail)
    return out
