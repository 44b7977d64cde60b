"""RFC 5280 §6.3 as the gateway applies it: several CRLs per issuer, IDP scope, reasons,
unusable CRLs, negative serials, expired CRLs. Each case with sources delivered in both
orders, since a verdict must never depend on download order."""

from __future__ import annotations

import datetime
import itertools
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ObjectIdentifier
from twisted.internet.task import Clock

from gateway.config.model import CrlSettings
from gateway.demo import pki
from gateway.revocation import crl as C
from gateway.revocation.checker import RevocationChecker
from gateway.revocation.crl_service import CrlCache
from gateway.testing.crl import crl_der

SETTINGS = CrlSettings(
    urls=("http://a",),
    http_timeout=5,
    max_size=1 << 20,
    expired_policy="reject",
    grace_period=0,
    from_cert=False,
    capacity=8,
)
R = x509.ReasonFlags


@pytest.fixture(scope="module")
def ca() -> pki.Issued:
    return pki.make_ca("scope root")


def build(
    ca: pki.Issued,
    serials: list[int],
    number: int = 1,
    idp: x509.IssuingDistributionPoint | None = None,
    extra: list[tuple[x509.ExtensionType, bool]] = (),  # type: ignore[assignment]
    next_update: datetime.timedelta = datetime.timedelta(hours=1),
    this_update: datetime.datetime | None = None,
    signer: pki.Issued | None = None,
) -> bytes:
    now = this_update or pki.now() - datetime.timedelta(minutes=1)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now)
        .next_update(now + next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    if idp is not None:
        builder = builder.add_extension(idp, critical=True)
    for ext, critical in extra:
        builder = builder.add_extension(ext, critical=critical)
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    key = (signer or ca).key
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def idp(
    url: str | None = None,
    user: bool = False,
    ca_only: bool = False,
    reasons: frozenset[x509.ReasonFlags] | None = None,
) -> x509.IssuingDistributionPoint:
    return x509.IssuingDistributionPoint(
        full_name=[x509.UniformResourceIdentifier(url)] if url else None,
        relative_name=None,
        only_contains_user_certs=user,
        only_contains_ca_certs=ca_only,
        only_some_reasons=reasons,
        indirect_crl=False,
        only_contains_attribute_certs=False,
    )


def checker_with(
    ca: pki.Issued,
    sources: list[tuple[str, bytes]],
    trust: list[x509.Certificate] | None = None,
) -> RevocationChecker:
    clock = Clock()
    clock.advance(time.time())
    cache = CrlCache(clock, 0)
    for url, body in sources:
        for loaded in C.load(body, trust or [ca.cert], clock.seconds()):
            cache.install(loaded, url)
    return RevocationChecker(cache, SETTINGS, None, clock)


def verdict(checker: RevocationChecker, cert: x509.Certificate) -> str:
    refused = checker.check(cert, cert.issuer.public_bytes(), cert.serial_number, 0, None)
    return "good" if refused is None else refused[0]


def verdicts(
    ca: pki.Issued, sources: list[tuple[str, bytes]], certs: list[x509.Certificate]
) -> set[tuple[str, ...]]:
    """The verdicts on the certificates, for every order of the sources: a set holding one
    tuple when the order does not matter."""
    out = set()
    for order in itertools.permutations(sources):
        checker = checker_with(ca, list(order))
        out.add(tuple(verdict(checker, c) for c in certs))
    return out


def test_partitions_with_the_same_number_are_both_in_force(ca: pki.Issued) -> None:
    """Two partitions of one CA, same CRL number, from two URLs: both are held, and a
    certificate listed in either is refused whichever arrived first."""
    a = pki.issue(ca, "part-a", crl_url="http://ca.test/a.crl").cert
    b = pki.issue(ca, "part-b", crl_url="http://ca.test/b.crl").cert
    sources = [
        ("http://ca.test/a.crl", build(ca, [], 7, idp("http://ca.test/a.crl"))),
        ("http://ca.test/b.crl", build(ca, [b.serial_number], 7, idp("http://ca.test/b.crl"))),
    ]
    assert verdicts(ca, sources, [a, b]) == {("good", "revoked")}


def test_idp_distribution_point_scope(ca: pki.Issued) -> None:
    """A CRL limited to one distribution point covers only certificates naming it; one with
    no CRL Distribution Points, or another one, is not covered: no CRL in force, refused."""
    inside = pki.issue(ca, "dp-in", crl_url="http://ca.test/p1.crl").cert
    other = pki.issue(ca, "dp-other", crl_url="http://ca.test/p2.crl").cert
    bare = pki.issue(ca, "dp-none").cert
    sources = [("http://ca.test/p1.crl", build(ca, [], 1, idp("http://ca.test/p1.crl")))]
    assert verdicts(ca, sources, [inside, other, bare]) == {("good", "crl_missing", "crl_missing")}


def test_only_user_and_only_ca_scopes(ca: pki.Issued) -> None:
    """onlyContainsUserCerts does not cover a CA certificate, onlyContainsCACerts not a leaf."""
    sub = pki.make_ca("scope sub", issuer=ca).cert
    leaf = pki.issue(ca, "scope-leaf").cert
    users = [("http://u", build(ca, [], 1, idp(user=True)))]
    cas = [("http://c", build(ca, [], 1, idp(ca_only=True)))]
    assert verdicts(ca, users, [leaf, sub]) == {("good", "crl_missing")}
    assert verdicts(ca, cas, [leaf, sub]) == {("crl_missing", "good")}
    assert verdicts(ca, users + cas, [leaf, sub]) == {("good", "good")}


def test_reasons_must_all_be_covered(ca: pki.Issued) -> None:
    """A CRL for some reasons alone leaves the status undetermined (refused by policy); with
    a second CRL for the other reasons it is decided, in either order."""
    leaf = pki.issue(ca, "reasons-leaf").cert
    listed = pki.issue(ca, "reasons-listed").cert
    some = frozenset({R.key_compromise, R.ca_compromise})
    rest = frozenset(
        {
            R.affiliation_changed,
            R.superseded,
            R.cessation_of_operation,
            R.certificate_hold,
            R.privilege_withdrawn,
            R.aa_compromise,
        }
    )
    first = ("http://k", build(ca, [listed.serial_number], 3, idp(reasons=some)))
    second = ("http://r", build(ca, [], 3, idp(reasons=rest)))
    assert verdicts(ca, [first], [leaf, listed]) == {("crl_incomplete", "revoked")}
    assert verdicts(ca, [first, second], [leaf, listed]) == {("good", "revoked")}


def test_unknown_critical_extensions(ca: pki.Issued) -> None:
    """An unknown critical extension makes the CRL unusable; a non-critical one is ignored."""
    odd = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    with pytest.raises(C.CrlError) as info:
        C.load(build(ca, [1], extra=[(odd, True)]), [ca.cert], time.time())
    assert info.value.kind == "unknown_critical_extension"
    assert C.load(build(ca, [1], extra=[(odd, False)]), [ca.cert], time.time())


def leaf_for(
    ca: pki.Issued,
    cn: str,
    url: str,
    crl_issuer: x509.Name | None,
    relative: x509.RelativeDistinguishedName | None = None,
) -> x509.Certificate:
    """A device certificate whose distribution point names ``crl_issuer`` as its cRLIssuer
    (and, with ``relative``, gives its name as nameRelativeToCRLIssuer instead of ``url``)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    point = x509.DistributionPoint(
        full_name=[x509.UniformResourceIdentifier(url)] if relative is None else None,
        relative_name=relative,
        reasons=None,
        crl_issuer=[x509.DirectoryName(crl_issuer)] if crl_issuer is not None else None,
    )
    start = pki.now() - datetime.timedelta(hours=1)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
        .add_extension(x509.CRLDistributionPoints([point]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def indirect_crl(
    crl_issuer: pki.Issued,
    entries: list[tuple[x509.Name, int]],
    indirect: bool = True,
    relative: x509.RelativeDistinguishedName | None = None,
) -> bytes:
    """An indirect CRL by ``crl_issuer``: each entry carries its certificate's issuer
    (``indirect=False``: the same without an IDP, a malformed CRL; ``relative``: its IDP
    names its distribution point relative to its issuer)."""
    now = pki.now() - datetime.timedelta(minutes=1)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(crl_issuer.cert.subject)
        .last_update(now)
        .next_update(now + datetime.timedelta(hours=1))
        .add_extension(x509.CRLNumber(1), critical=False)
    )
    if indirect:
        builder = builder.add_extension(
            x509.IssuingDistributionPoint(None, relative, False, False, None, True, False),
            critical=True,
        )
    for name, serial in entries:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now)
            .add_extension(x509.CertificateIssuer([x509.DirectoryName(name)]), critical=True)
            .build()
        )
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(crl_issuer.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_indirect_crls() -> None:
    """An indirect CRL (another entity's, entries carrying certificateIssuer) covers the
    devices whose distribution point names it as cRLIssuer, and only those; a device naming
    no cRLIssuer needs a direct CRL of its own issuer. Verdicts do not depend on order."""
    root = pki.make_ca("indirect root")
    dev = pki.make_ca("indirect devices CA", issuer=root)
    xca = pki.make_ca("indirect CRL issuer", issuer=root)
    url = "http://ca.test/indirect.crl"
    good = leaf_for(dev, "ind-good", url, xca.cert.subject)
    bad = leaf_for(dev, "ind-bad", url, xca.cert.subject)
    plain = leaf_for(dev, "ind-plain", "http://ca.test/dev.crl", None)
    trust = [root.cert, dev.cert, xca.cert]
    ind = (url, indirect_crl(xca, [(dev.cert.subject, bad.serial_number)]))
    direct = ("http://ca.test/dev.crl", build(dev, []))
    certs = [good, bad, plain]
    for sources, expected in [
        ([ind], ("good", "revoked", "crl_missing")),
        ([ind, direct], ("good", "revoked", "good")),
    ]:
        seen = set()
        for order in itertools.permutations(sources):
            checker = checker_with(root, list(order), trust)
            seen.add(tuple(verdict(checker, c) for c in certs))
        assert seen == {expected}
    # The live sweep (no certificate at hand) finds the listed serial too.
    checker = checker_with(root, [ind], trust)
    assert checker.chain_revoked([(dev.cert.subject.public_bytes(), bad.serial_number)])
    # certificateIssuer entries in a CRL that is not indirect are refused.
    with pytest.raises(C.CrlError) as info:
        C.load(indirect_crl(xca, [(dev.cert.subject, 5)], indirect=False), trust, time.time())
    assert "not indirect" in info.value.detail


def test_a_point_named_relative_to_its_crl_issuer() -> None:
    """A distribution point naming a cRLIssuer and giving its name relative to it
    (nameRelativeToCRLIssuer) is that issuer's point, RFC 5280 §4.2.1.13: the indirect CRL
    whose IDP names the same point covers the device; one naming another point does not."""
    from cryptography.x509.oid import NameOID

    root = pki.make_ca("relative root")
    dev = pki.make_ca("relative devices CA", issuer=root)
    xca = pki.make_ca("relative CRL issuer", issuer=root)
    part = x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "part 1")])
    other = x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "part 2")])
    good = leaf_for(dev, "rel-good", "", xca.cert.subject, relative=part)
    bad = leaf_for(dev, "rel-bad", "", xca.cert.subject, relative=part)
    trust = [root.cert, dev.cert, xca.cert]
    url = "http://ca.test/part1.crl"
    listed = [(dev.cert.subject, bad.serial_number)]
    checker = checker_with(root, [(url, indirect_crl(xca, listed, relative=part))], trust)
    assert (verdict(checker, good), verdict(checker, bad)) == ("good", "revoked")
    checker = checker_with(root, [(url, indirect_crl(xca, listed, relative=other))], trust)
    assert (verdict(checker, good), verdict(checker, bad)) == ("crl_missing", "crl_missing")


def delta(ca: pki.Issued, base: int, number: int, revoked: list[int], removed: list[int]) -> bytes:
    """A delta CRL: entries revoked since the base, and removeFromCRL entries."""
    now = pki.now() - datetime.timedelta(minutes=1)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now)
        .next_update(now + datetime.timedelta(hours=1))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.DeltaCRLIndicator(base), critical=True)
    )
    for serial, reason in [(s, R.key_compromise) for s in revoked] + [
        (s, R.remove_from_crl) for s in removed
    ]:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now)
            .add_extension(x509.CRLReason(reason), critical=False)
            .build()
        )
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_delta_crls_complete_their_base(ca: pki.Issued) -> None:
    """A delta on a held base adds revocations and releases holds (removeFromCRL), in either
    order; a delta whose base is not held, or on its own, is never used."""
    held, kept, late, fine = (pki.issue(ca, f"delta-{n}").cert for n in range(4))
    base = ("http://base", build(ca, [held.serial_number, kept.serial_number], 10))
    d = ("http://delta", delta(ca, 10, 11, [late.serial_number], [held.serial_number]))
    certs = [held, kept, late, fine]
    assert verdicts(ca, [base], certs) == {("revoked", "revoked", "good", "good")}
    assert verdicts(ca, [base, d], certs) == {("good", "revoked", "revoked", "good")}
    newer_base = ("http://delta", delta(ca, 12, 13, [late.serial_number], [held.serial_number]))
    assert verdicts(ca, [base, newer_base], certs) == {("revoked", "revoked", "good", "good")}
    assert verdicts(ca, [d], certs) == {("crl_missing",) * 4}
    undated = build(ca, [], 5, extra=[(x509.DeltaCRLIndicator(4), True)])
    (loaded,) = C.load(undated, [ca.cert], time.time())
    assert loaded.info.delta_base == 4 and loaded.removed is not None


def test_negative_serials_are_matched(ca: pki.Issued) -> None:
    """A CRL listing negative serials (old CAs) loads; the listed ones are revoked, others
    (their absolute values included) are not."""
    body = crl_der(ca, [-5, -(2**100), 7])
    (loaded,) = C.load(body, [ca.cert], time.time())
    for serial, listed in [(-5, True), (-(2**100), True), (7, True), (5, False), (-7, False)]:
        assert (serial in loaded.index) is listed


def test_expired_newer_crl_never_replaces_a_valid_one(ca: pki.Issued) -> None:
    """A CRL with a higher number but past its nextUpdate is kept out while the held one is
    valid; devices are not refused as crl_expired."""
    clock = Clock()
    clock.advance(time.time())
    cache = CrlCache(clock, 0)
    (valid,) = C.load(build(ca, [], 1), [ca.cert], clock.seconds())
    old = pki.now() - datetime.timedelta(hours=3)
    stale = build(ca, [], 2, this_update=old, next_update=datetime.timedelta(hours=1))
    (expired,) = C.load(stale, [ca.cert], clock.seconds())
    assert cache.install(valid, "http://a") == "newer"
    assert cache.install(expired, "http://a") == "expired"
    assert cache.status(ca.cert.subject.public_bytes(), 5) == "good"
    # With nothing valid held, the expired one is still better than nothing (it lists
    # revocations), and the policy decides for the rest.
    fresh = CrlCache(clock, 0)
    assert fresh.install(expired, "http://a") == "newer"
    assert fresh.status(ca.cert.subject.public_bytes(), 5) == "expired"


def test_crl_signer_path_and_revocation() -> None:
    """A CRL signed by a separate CRL-signing certificate (same name as the CA, its own key,
    issued by the root) is used while that certificate is good; once the root's CRL revokes
    it, the CRLs it signed are void and the devices' status cannot be determined. A signer
    that does not chain to a trust anchor is refused at load."""
    from gateway.peer import PeerVerification

    root = pki.make_ca("signer root")
    dev = pki.make_ca("signer devices CA", issuer=root)
    signer = pki.make_ca("signer devices CA", issuer=root)  # same name, its own key
    leaf = pki.issue(dev, "signed-elsewhere").cert
    trust = [root.cert, dev.cert, signer.cert]
    devices = ("http://d", build(dev, [], signer=signer))
    root_name, dev_name = root.cert.subject.public_bytes(), dev.cert.subject.public_bytes()
    chain = [(root_name, root.cert.serial_number), (root_name, dev.cert.serial_number)]
    results = []
    for root_crl in (build(root, []), build(root, [signer.cert.serial_number], 2)):
        for order in itertools.permutations([devices, ("http://r", root_crl)]):
            checker = checker_with(root, list(order), trust)
            record = PeerVerification(chain=[*chain, (dev_name, leaf.serial_number)])
            refused = checker.check(leaf, dev_name, leaf.serial_number, 0, record)
            results.append("good" if refused is None else refused[0])
    assert results == ["good", "good", "crl_missing", "crl_missing"]
    with pytest.raises(C.CrlError) as info:
        C.load(devices[1], [dev.cert, signer.cert], time.time())  # no anchor for the signer
    assert info.value.kind == "untrusted_signer"


def test_delta_crl_through_the_worker(ca: pki.Issued) -> None:
    """The worker's answer carries a delta's removeFromCRL index beside its revoked one."""
    from gateway.revocation.process import encode_request
    from gateway.testing import InlineProcessor

    body = delta(ca, 10, 11, [11, 12], [13])
    header = encode_request(pki.cert_pem(ca.cert), time.time(), 300, None, "http://delta", [])
    results: list[list[C.LoadedCrl]] = []
    InlineProcessor().process(header, [body], 1 << 20).addCallback(results.append)
    ((loaded,),) = results
    assert loaded.info.delta_base == 10 and loaded.info.number == 11
    assert 11 in loaded.index and 12 in loaded.index and 13 not in loaded.index
    assert loaded.removed is not None and 13 in loaded.removed and 11 not in loaded.removed


def test_indirect_crl_through_the_worker() -> None:
    """The worker's answer carries an indirect CRL's entries per certificate issuer."""
    from gateway.revocation.process import encode_request
    from gateway.testing import InlineProcessor

    root = pki.make_ca("wire root")
    dev = pki.make_ca("wire devices CA", issuer=root)
    xca = pki.make_ca("wire CRL issuer", issuer=root)
    body = indirect_crl(xca, [(xca.cert.subject, 3), (dev.cert.subject, 7), (dev.cert.subject, 8)])
    trust_pem = pki.cert_pem(root.cert, dev.cert, xca.cert)
    header = encode_request(trust_pem, time.time(), 300, None, "http://x", [])
    results: list[list[C.LoadedCrl]] = []
    InlineProcessor().process(header, [body], 1 << 20).addCallback(results.append)
    ((loaded,),) = results
    assert loaded.info.scope.indirect and 3 in loaded.index and 7 not in loaded.index
    assert loaded.sections is not None
    section = loaded.sections[dev.cert.subject.public_bytes()]
    assert 7 in section and 8 in section and 3 not in section
