"""Throwaway PKI for the demo and the tests: CAs, server and client certificates.

Keys are generated at run time and written next to the certificates; nothing here is
meant for production use.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = Any  # rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def new_key(kind: str = "ec") -> Key:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@attrs.frozen
class Issued:
    cert: x509.Certificate
    key: Key
    chain: tuple[x509.Certificate, ...] = ()  # issuer chain, nearest first, root excluded

    def write(self, directory: str, name: str) -> tuple[str, str]:
        """Write NAME.pem (cert then chain) and NAME.key; return their paths."""
        cert_path = os.path.join(directory, f"{name}.pem")
        key_path = os.path.join(directory, f"{name}.key")
        with open(cert_path, "wb") as f:
            f.write(cert_pem(self.cert, *self.chain))
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem(self.key))
        return cert_path, key_path


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mqttgw test"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def make_ca(
    cn: str = "mqttgw test root CA",
    key_kind: str = "ec",
    issuer: Issued | None = None,
    crl_url: str | None = None,
    ocsp_url: str | None = None,
) -> Issued:
    """A self-signed root, or an intermediate when ``issuer`` is given."""
    key = new_key(key_kind)
    signer_key = issuer.key if issuer else key
    issuer_name = issuer.cert.subject if issuer else _name(cn)
    start = now() - datetime.timedelta(days=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
        builder = _add_revocation_pointers(builder, crl_url, ocsp_url)
    cert = builder.sign(signer_key, hashes.SHA256())
    chain = ((issuer.cert,) + issuer.chain) if issuer else ()
    # A root is not part of the chain a peer sends; an intermediate's chain excludes its root.
    return Issued(cert, key, tuple(c for c in chain if c.issuer != c.subject))


def _add_revocation_pointers(
    builder: x509.CertificateBuilder,
    crl_url: str | None,
    ocsp_url: str | None,
    crl_issuer: x509.Name | None = None,
) -> x509.CertificateBuilder:
    if crl_url:
        issuer = [x509.DirectoryName(crl_issuer)] if crl_issuer is not None else None
        point = x509.DistributionPoint(
            [x509.UniformResourceIdentifier(crl_url)], None, None, issuer
        )
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    if ocsp_url:
        builder = builder.add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        x509.oid.AuthorityInformationAccessOID.OCSP,
                        x509.UniformResourceIdentifier(ocsp_url),
                    )
                ]
            ),
            critical=False,
        )
    return builder


def issue(
    ca: Issued,
    cn: str,
    server: bool = False,
    key_kind: str = "ec",
    valid_days: float = 365,
    not_before: datetime.datetime | None = None,
    crl_url: str | None = None,
    ocsp_url: str | None = None,
    serial: int | None = None,
    ocsp_signing: bool = False,
    crl_issuer: x509.Name | None = None,
    names: tuple[str, ...] = (),
) -> Issued:
    """A leaf certificate (server: localhost/127.0.0.1 SANs, or ``names``, and serverAuth)."""
    key = new_key(key_kind)
    start = not_before or (now() - datetime.timedelta(hours=1))
    usage = [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
    if ocsp_signing:
        usage = [ExtendedKeyUsageOID.OCSP_SIGNING]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in names]
                or [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    builder = _add_revocation_pointers(builder, crl_url, ocsp_url, crl_issuer)
    cert = builder.sign(ca.key, hashes.SHA256())
    chain = tuple(c for c in (ca.cert,) + ca.chain if c.issuer != c.subject)
    return Issued(cert, key, chain)


def write_ca_bundle(path: str, *cas: Issued) -> str:
    with open(path, "wb") as f:
        f.write(cert_pem(*[ca.cert for ca in cas]))
    return path


_CNF = """\
[ca]
default_ca = CA_default
[CA_default]
dir = {dir}
database = $dir/index.txt
crlnumber = $dir/crlnumber
certificate = $dir/ca.pem
private_key = $dir/ca.key
default_md = sha256
default_crl_days = 1
crl_extensions = crl_ext
[crl_ext]
authorityKeyIdentifier = keyid:always
"""


@attrs.define
class OpensslCA:
    """A CA whose CRLs are made by `openssl ca -gencrl` from its index.txt."""

    dir: str
    issued: Issued

    @classmethod
    def create(cls, directory: str, issued: Issued) -> OpensslCA:
        os.makedirs(directory, exist_ok=True)
        issued.write(directory, "ca")  # ca.pem (with its chain) and ca.key
        with open(os.path.join(directory, "ca.pem"), "wb") as f:
            f.write(cert_pem(issued.cert))
        open(os.path.join(directory, "index.txt"), "w").close()
        with open(os.path.join(directory, "index.txt.attr"), "w") as f:
            f.write("unique_subject = no\n")
        with open(os.path.join(directory, "crlnumber"), "w") as f:
            f.write("1000\n")
        with open(os.path.join(directory, "openssl.cnf"), "w") as f:
            f.write(_CNF.format(dir=directory))
        return cls(directory, issued)

    def _openssl(self, *args: str) -> None:
        result = subprocess.run(
            ["openssl", "ca", "-batch", "-config", os.path.join(self.dir, "openssl.cnf"), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"openssl ca {args}: {result.stderr}")

    @property
    def config(self) -> str:
        return os.path.join(self.dir, "openssl.cnf")

    def revoke(self, cert_path: str) -> None:
        self._openssl("-revoke", cert_path)

    def register(self, cert_path: str) -> None:
        """Record a certificate as valid in index.txt (so OCSP answers 'good', not 'unknown')."""
        self._openssl("-valid", cert_path)

    def gencrl(self, name: str = "ca.crl", hours: int | None = None, der: bool = False) -> bytes:
        out = os.path.join(self.dir, name)
        args = ["-gencrl", "-out", out]
        if hours is not None:
            args += ["-crlhours", str(hours)]
        self._openssl(*args)
        if der:
            subprocess.run(
                ["openssl", "crl", "-in", out, "-outform", "DER", "-out", out], check=True
            )
        with open(out, "rb") as f:
            return f.read()
