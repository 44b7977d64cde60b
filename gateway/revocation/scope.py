"""Which certificates a CRL speaks for (RFC 5280 §5.2.5 and §6.3.3), and with what reasons.

A CRL's issuing distribution point (IDP) may limit it to user or CA certificates, to one
distribution point's certificates, or to some revocation reasons; a certificate counts as
not revoked only once the CRLs in force that cover it, together, cover every reason. The
rules follow OpenSSL's ``crl_crldp_check``, which HAProxy and mosquitto rely on. Pure: no I/O,
no Twisted.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from cryptography import x509

# Every revocation reason a CRL may speak for (RFC 5280 ReasonFlags, 'unused' aside).
ALL_REASONS = frozenset(
    {
        "key_compromise",
        "ca_compromise",
        "affiliation_changed",
        "superseded",
        "cessation_of_operation",
        "certificate_hold",
        "privilege_withdrawn",
        "aa_compromise",
    }
)


def name_key(name: x509.GeneralName) -> str:
    """A comparable text for a GeneralName (distribution point names are compared as such)."""
    if isinstance(name, x509.UniformResourceIdentifier):
        return "uri:" + name.value
    if isinstance(name, x509.DirectoryName):
        return "dn:" + name.value.public_bytes().hex()
    if isinstance(name, x509.DNSName):
        return "dns:" + name.value.lower()
    return f"{type(name).__name__}:{name.value!r}"


def point_names(
    full_name: list[x509.GeneralName] | None,
    relative_name: x509.RelativeDistinguishedName | None,
    crl_issuer: x509.Name,
) -> frozenset[str] | None:
    """The names of a distribution point (a relative name is appended to the CRL issuer's
    name, RFC 5280 §4.2.1.13); None when the point names none."""
    if full_name is not None:
        return frozenset(name_key(n) for n in full_name)
    if relative_name is not None:
        full = x509.Name([*crl_issuer.rdns, relative_name])
        return frozenset({name_key(x509.DirectoryName(full))})
    return None


def _reasons(flags: frozenset[x509.ReasonFlags] | None) -> frozenset[str] | None:
    if flags is None:
        return None
    return frozenset(f.name for f in flags) & ALL_REASONS


@attrs.frozen
class CrlScope:
    """What a CRL's IDP says about the certificates it covers. The default: everything its
    issuer issued, for every reason."""

    only_user: bool = False
    only_ca: bool = False
    only_attribute: bool = False
    names: frozenset[str] | None = None  # the IDP's distribution point names
    reasons: frozenset[str] | None = None  # onlySomeReasons; None: all
    indirect: bool = False  # indirectCRL: speaks for certificates of other issuers too

    @property
    def complete(self) -> bool:
        """Covers every certificate of its issuer for every reason (no IDP limits)."""
        return self == _COMPLETE

    def key(self) -> str:
        """A canonical text, so that CRLs of one scope replace each other and no other."""
        return "" if self.complete else json.dumps(self.to_json(), sort_keys=True)

    def to_json(self) -> dict[str, object]:
        return {
            "only_user": self.only_user,
            "only_ca": self.only_ca,
            "only_attribute": self.only_attribute,
            "names": None if self.names is None else sorted(self.names),
            "reasons": None if self.reasons is None else sorted(self.reasons),
            "indirect": self.indirect,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> CrlScope:
        if not data:
            return _COMPLETE
        names, reasons = data.get("names"), data.get("reasons")
        return cls(
            only_user=bool(data.get("only_user")),
            only_ca=bool(data.get("only_ca")),
            only_attribute=bool(data.get("only_attribute")),
            names=None if names is None else frozenset(map(str, names)),
            reasons=None if reasons is None else frozenset(map(str, reasons)),
            indirect=bool(data.get("indirect")),
        )


_COMPLETE = CrlScope()


def crl_scope(idp: x509.IssuingDistributionPoint | None, issuer: x509.Name) -> CrlScope:
    if idp is None:
        return _COMPLETE
    return CrlScope(
        only_user=idp.only_contains_user_certs,
        only_ca=idp.only_contains_ca_certs,
        only_attribute=idp.only_contains_attribute_certs,
        names=point_names(idp.full_name, idp.relative_name, issuer),
        reasons=_reasons(idp.only_some_reasons),
        indirect=idp.indirect_crl,
    )


def issuer_key(name_der: bytes) -> str:
    """The name_key of a DirectoryName, from the Name's DER (CRL issuers are compared so)."""
    return "dn:" + name_der.hex()


@attrs.frozen
class CertPoint:
    names: frozenset[str] | None
    reasons: frozenset[str] | None
    crl_issuers: frozenset[str] | None  # cRLIssuer: the (indirect) CRL issuers named for it


@attrs.frozen
class CertScope:
    """What a certificate says about the CRLs that may cover it."""

    is_ca: bool
    points: tuple[CertPoint, ...]


def cert_scope(cert: x509.Certificate) -> CertScope:
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (x509.ExtensionNotFound, ValueError):
        is_ca = False
    try:
        dps = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except (x509.ExtensionNotFound, ValueError):
        dps = None
    points = tuple(
        CertPoint(
            _cert_point_names(dp, cert.issuer),
            _reasons(dp.reasons),
            frozenset(name_key(n) for n in dp.crl_issuer) if dp.crl_issuer else None,
        )
        for dp in dps or ()
    )
    return CertScope(is_ca, points)


def _cert_point_names(dp: x509.DistributionPoint, cert_issuer: x509.Name) -> frozenset[str] | None:
    """A certificate's distribution point names. A nameRelativeToCRLIssuer is appended to
    the cRLIssuer's name when the point names one, else to the certificate issuer's
    (RFC 5280 §4.2.1.13): a point naming an indirect CRL issuer is that issuer's."""
    if dp.relative_name is None or not dp.crl_issuer:
        return point_names(dp.full_name, dp.relative_name, cert_issuer)
    names: set[str] = set()
    for issuer in dp.crl_issuer:
        if isinstance(issuer, x509.DirectoryName):
            names |= point_names(None, dp.relative_name, issuer.value) or set()
    return frozenset(names)


def covered_reasons(
    scope: CrlScope, cert: CertScope, direct: bool = True, crl_issuer: str = ""
) -> frozenset[str]:
    """The reasons for which a CRL speaks for the certificate (empty: not in its scope).
    ``direct``: the CRL's issuer is the certificate's; otherwise ``crl_issuer`` (its
    issuer_key) must be named as cRLIssuer by a distribution point of the certificate.
    As OpenSSL's crl_crldp_check: the IDP's kind limits first; then a distribution point of
    the certificate for this CRL issuer whose names meet the IDP's; else, only a direct CRL
    whose IDP names no distribution point covers it."""
    if scope.only_attribute:
        return frozenset()
    if (cert.is_ca and scope.only_user) or (not cert.is_ca and scope.only_ca):
        return frozenset()
    reasons = ALL_REASONS if scope.reasons is None else scope.reasons
    for point in cert.points:
        if point.crl_issuers is not None:
            if crl_issuer not in point.crl_issuers:
                continue  # that point names another CRL issuer
        elif not direct:
            continue  # a point without cRLIssuer is for its issuer's own CRLs
        if scope.names is None or point.names is None or point.names & scope.names:
            return reasons & (ALL_REASONS if point.reasons is None else point.reasons)
    return reasons if scope.names is None and direct else frozenset()
