"""The DER reader of revoked serials against cryptography's parse of the same CRLs."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ObjectIdentifier
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.demo import pki
from gateway.revocation import crl as C
from gateway.revocation.der_entries import revoked_serials

NOW = pki.now().replace(microsecond=0) - datetime.timedelta(minutes=1)
CA = pki.make_ca("der-entries")

# What an entry carries besides its serial and date.
PLAIN = ("none", "reason", "invalidity", "both")
LEFT_TO_CRYPTOGRAPHY = ("certificate_issuer", "critical_unknown", "critical_reason")
entries = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=2**159 - 1),
        st.integers(min_value=0, max_value=10**9),  # seconds before NOW: UTCTime or not
        st.sampled_from(PLAIN + LEFT_TO_CRYPTOGRAPHY),
    ),
    max_size=40,
)


def build(items: list[tuple[int, int, str]]) -> bytes:
    builder = x509.CertificateRevocationListBuilder().issuer_name(CA.cert.subject)
    builder = builder.last_update(NOW).next_update(NOW + datetime.timedelta(days=1))
    builder = builder.add_extension(x509.CRLNumber(1), critical=False)
    for serial, age, extra in items:
        when = NOW - datetime.timedelta(seconds=age)
        if age % 7 == 0:  # now and then a date past 2049: GeneralizedTime
            when = datetime.datetime(2050, 1, 1, tzinfo=datetime.timezone.utc)
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when)
        if extra in ("reason", "both"):
            entry = entry.add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), False)
        if extra in ("invalidity", "both"):
            entry = entry.add_extension(x509.InvalidityDate(when), False)
        if extra == "critical_reason":
            entry = entry.add_extension(x509.CRLReason(x509.ReasonFlags.superseded), True)
        if extra == "certificate_issuer":
            name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "other")])
            entry = entry.add_extension(x509.CertificateIssuer([x509.DirectoryName(name)]), False)
        if extra == "critical_unknown":
            oid = ObjectIdentifier("1.3.6.1.4.1.99999.1")
            entry = entry.add_extension(x509.UnrecognizedExtension(oid, b"\x05\x00"), True)
        builder = builder.add_revoked_certificate(entry.build())
    crl = builder.sign(CA.key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.DER)


@settings(max_examples=60, deadline=None)
@given(entries)
def test_the_reader_gives_cryptographys_serials_or_steps_aside(
    items: list[tuple[int, int, str]],
) -> None:
    """Plain entries (with non-critical reason and invalidity date or none): the same
    serials in the same order as cryptography's; an entry with a critical extension or a
    certificateIssuer: None (cryptography's path decides)."""
    der = build(items)
    parsed = x509.load_der_x509_crl(der)
    got = revoked_serials(der)
    if any(extra in LEFT_TO_CRYPTOGRAPHY for _, _, extra in items):
        assert got is None
    else:
        assert got == [entry.serial_number for entry in parsed]


DAMAGED = build([(5, 0, "reason"), (2**70, 3, "none"), (9, 10, "both")])


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_damage_gives_serials_or_none_never_an_exception(data: st.DataObject) -> None:
    der = bytearray(DAMAGED)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(der) - 1))
        der[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(der)))
    result = revoked_serials(bytes(der[:cut]))
    assert result is None or all(isinstance(s, int) for s in result)


def test_load_reads_plain_entries_and_refuses_what_it_cannot_interpret() -> None:
    """Through ``load``: a plain CRL's index from the DER reader; an entry with an unknown
    critical extension is still refused by name (cryptography's path)."""
    trust = [CA.cert]
    at = NOW.timestamp() + 120
    (loaded,) = C.load(build([(7, 0, "reason"), (3, 0, "none")]), trust, at)
    assert 7 in loaded.index and 3 in loaded.index and 4 not in loaded.index
    assert loaded.info.count == 2
    with pytest.raises(C.CrlError) as refused:
        C.load(build([(7, 0, "critical_unknown")]), trust, at)
    assert refused.value.kind == "unknown_critical_extension"
    with pytest.raises(C.CrlError) as refused:
        C.load(build([(7, 0, "certificate_issuer")]), trust, at)
    assert "not indirect" in refused.value.detail


one_size = st.lists(st.integers(min_value=2**120, max_value=2**127 - 1), min_size=1, max_size=60)


@settings(max_examples=60, deadline=None)
@given(one_size, st.sampled_from([0, 7]))
def test_entries_of_one_shape_are_read_column_by_column(serials: list[int], age: int) -> None:
    """Entries that all have the shape of the first (a large CA's CRL often does): read by
    strided slices, the same serials in the same order as cryptography's."""
    der = build([(s, age, "none") for s in serials])
    assert _uniform_used(der)
    assert revoked_serials(der) == [e.serial_number for e in x509.load_der_x509_crl(der)]


UNIFORM = build([(2**126 + i, 0, "none") for i in range(6)])


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damage_to_entries_of_one_shape_never_reads_other_serials(data: st.DataObject) -> None:
    """Whatever bytes change: no exception, and where cryptography still reads the CRL,
    the same serials or None (never others)."""
    der = bytearray(UNIFORM)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(der) - 1))
        der[at] = data.draw(st.integers(0, 255))
    result = revoked_serials(bytes(der))
    try:
        theirs = [e.serial_number for e in x509.load_der_x509_crl(bytes(der))]
    except Exception:  # (ValueError, InvalidVersion, ...: cryptography refuses it)
        return
    assert result is None or result == theirs


def _uniform_used(der: bytes) -> bool:
    from gateway.revocation import der_entries

    seen: list[object] = []
    original = der_entries._uniform

    def spy(*args: object) -> object:
        seen.append(result := original(*args))  # type: ignore[arg-type]
        return result

    der_entries._uniform = spy  # type: ignore[assignment]
    try:
        revoked_serials(der)
    finally:
        der_entries._uniform = original
    return bool(seen) and seen[0] is not None
