"""The device's identity, as its verified certificate gives it (EMQX's peer_cert_as_username
and peer_cert_as_clientid values). Pure: a cryptography certificate in, text out."""

from __future__ import annotations

import base64
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from gateway.choices import IdentitySource


def common_name(cert: x509.Certificate) -> str | None:
    """The subject's (last) CN, or None."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return None
    value = names[-1].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def identity_of(cert: x509.Certificate, source: IdentitySource | str) -> str:
    """cn: the subject's CN; dn: the subject as RFC 4514; crt: base64 of the DER; pem: the
    PEM text; md5: hex MD5 of the DER. ValueError when the certificate has no such value."""
    if source == IdentitySource.CN:
        cn = common_name(cert)
        if cn is None:
            raise ValueError("the client certificate has no CN")
        return cn
    if source == IdentitySource.DN:
        return cert.subject.rfc4514_string()
    der = cert.public_bytes(serialization.Encoding.DER)
    if source == IdentitySource.CRT:
        return base64.b64encode(der).decode("ascii")
    if source == IdentitySource.PEM:
        return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    if source == IdentitySource.MD5:
        return hashlib.md5(der, usedforsecurity=False).hexdigest()
    raise ValueError(f"unknown identity source {source!r}")
