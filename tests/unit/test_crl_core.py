"""Sans-IO CRL core: parsing, validation, the serial index, the worker's contract."""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from gateway.demo import pki
from gateway.revocation import crl as C
from gateway.revocation import worker
from gateway.revocation.crl import decode_answer
from gateway.revocation.process import encode_request
from gateway.revocation.store import read_index


def make_crl(
    ca: pki.Issued,
    serials: list[int],
    number: int | None = 1,
    this_update: datetime.datetime | None = None,
    next_update: datetime.timedelta | None = datetime.timedelta(hours=1),
    signer: pki.Issued | None = None,
) -> x509.CertificateRevocationList:
    now = this_update or pki.now() - datetime.timedelta(minutes=1)
    builder = x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject).last_update(now)
    if next_update is not None:
        builder = builder.next_update(now + next_update)
    if number is not None:
        builder = builder.add_extension(x509.CRLNumber(number), critical=False)
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    return builder.sign((signer or ca).key, hashes.SHA256())


def pem(*crls: x509.CertificateRevocationList) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in crls)


@pytest.fixture(scope="module")
def chain() -> tuple[pki.Issued, pki.Issued]:
    root = pki.make_ca("root")
    return root, pki.make_ca("inter", issuer=root)


def test_serial_index_membership() -> None:
    """The index finds exactly the revoked serials, whatever their width."""
    serials = [1, 255, 256, 2**64, 2**159 - 1, 12345678901234567890]
    index = C.SerialIndex.from_serials(serials)
    assert index.width == 20
    for s in serials:
        assert s in index
    for s in [0, 2, 254, 257, 2**64 + 1, 2**160, -1, -255, -(2**159)]:
        assert s not in index
    assert len(index) == len(serials)
    assert 5 not in C.SerialIndex.from_serials([])
    assert len(index.blob) == 20 * len(serials)  # width bytes per entry, nothing more
    # An index can live inside a larger buffer (the worker's answer), without a copy.
    buffer = bytearray(b"header\n") + index.blob + b"next"
    shared = C.SerialIndex(20, buffer, 7, len(serials))
    assert all(s in shared for s in serials) and 2 not in shared and shared.blob is buffer


def test_serial_index_negative_and_overlong_serials() -> None:
    """Negative serials (seen from old CAs) and serials longer than 20 octets are stored and
    matched exactly; their neighbours and their absolute values are not matched."""
    serials = [-1, -(2**70), 0, 5, -128, 2**200 + 3]
    index = C.SerialIndex.from_serials(serials)
    assert all(s in index for s in serials)
    for s in [1, -2, 2**70, 128, 2**200 + 2, -(2**70) + 1, 2**300]:
        assert s not in index
    small = C.SerialIndex.from_serials([-1, 1])
    assert small.width == 1 and -1 in small and 1 in small and 0 not in small


def test_load_pem_bundle_and_der(chain: tuple[pki.Issued, pki.Issued]) -> None:
    """A PEM body may carry several CRLs; a DER body carries one."""
    root, inter = chain
    trust = [root.cert, inter.cert]
    body = pem(make_crl(inter, [10, 11], number=7), make_crl(root, [99]))
    loaded = C.load(body, trust, time.time())
    assert [(lc.info.issuer_text, lc.info.count, lc.info.number) for lc in loaded] == [
        ("CN=inter,O=mqttgw test", 2, 7),
        ("CN=root,O=mqttgw test", 1, 1),
    ]
    assert 10 in loaded[0].index and 99 in loaded[1].index
    der = make_crl(inter, [5]).public_bytes(serialization.Encoding.DER)
    assert 5 in C.load(der, trust, time.time())[0].index
    # Other PEM blocks around them, CRLF line ends: the CRL blocks alone are read.
    other = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    mixed = other + body.replace(b"\n", b"\r\n") + other
    assert [lc.info.number for lc in C.load(mixed, trust, time.time())] == [7, 1]


@pytest.mark.parametrize(
    "body, kind",
    [
        (b"", "garbage"),
        (b"<html>hello</html>", "garbage"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "garbage"),
        (b"0\x82\x01\x00garbage", "garbage"),
        (b"-----BEGIN X509 CRL-----\nMII<script>\n-----END X509 CRL-----\n", "garbage"),
        (b"-----BEGIN X509 CRL-----\nMIIB", "garbage"),  # no END line
        (b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", "garbage"),
    ],
)
def test_garbage_is_refused(chain: tuple[pki.Issued, pki.Issued], body: bytes, kind: str) -> None:
    """Anything that is not a CRL is refused with a reason class."""
    with pytest.raises(C.CrlError) as info:
        C.load(body, [chain[0].cert], time.time())
    assert info.value.kind == kind


def test_validation_failures(chain: tuple[pki.Issued, pki.Issued]) -> None:
    """Unknown issuer, bad signature, and thisUpdate in the future are refused."""
    root, inter = chain
    other = pki.make_ca("other CA")
    trust = [root.cert, inter.cert]
    cases = {
        "unknown_issuer": make_crl(other, [1]),
        # Signed by another key under the intermediate's name.
        "bad_signature": make_crl(inter, [1], signer=other),
        "not_yet_valid": make_crl(inter, [1], this_update=pki.now() + datetime.timedelta(hours=2)),
    }
    for kind, crl in cases.items():
        with pytest.raises(C.CrlError) as info:
            C.load(pem(crl), trust, time.time())
        assert info.value.kind == kind, kind
    # Small clock skew is tolerated.
    skewed = make_crl(inter, [1], this_update=pki.now() + datetime.timedelta(minutes=2))
    assert C.load(pem(skewed), trust, time.time())


def test_compare_by_number_then_this_update(chain: tuple[pki.Issued, pki.Issued]) -> None:
    """A CRL is newer by CRL number when both have one, else by thisUpdate."""
    root, inter = chain
    trust = [root.cert, inter.cert]
    t0 = pki.now() - datetime.timedelta(hours=1)
    old = C.load(pem(make_crl(inter, [], number=5, this_update=t0)), trust, time.time())[0].info
    new = C.load(pem(make_crl(inter, [], number=6, this_update=t0)), trust, time.time())[0].info
    assert new.compare(old) == "newer" and old.compare(new) == "older"
    assert old.compare(old) == "same" and old.compare(None) == "newer"
    a = C.load(pem(make_crl(inter, [], number=None, this_update=t0)), trust, time.time())[0].info
    b = C.load(
        pem(make_crl(inter, [], number=None, this_update=t0 + datetime.timedelta(minutes=5))),
        trust,
        time.time(),
    )[0].info
    assert b.compare(a) == "newer"
    # CRL numbers of 20 octets (RFC 5280's most) one apart: compared exactly, not as floats
    big = 2**159 - 1
    low = C.load(pem(make_crl(inter, [], number=big - 1, this_update=t0)), trust, time.time())
    high = C.load(pem(make_crl(inter, [], number=big, this_update=t0)), trust, time.time())
    assert high[0].info.compare(low[0].info) == "newer"
    assert low[0].info.compare(high[0].info) == "older"


def test_worker_round_trip_and_persistence(
    chain: tuple[pki.Issued, pki.Issued], tmp_path: object
) -> None:
    """The worker's answer decodes to the same index; a valid body is persisted atomically."""
    root, inter = chain
    trust_pem = pki.cert_pem(root.cert, inter.cert)
    body = pem(make_crl(inter, list(range(1000, 1100)), number=3))
    path = os.path.join(str(tmp_path), "l", "x.crl")
    out = io.BytesIO()
    worker.main(
        io.BytesIO(encode_request(trust_pem, time.time(), 300, path, "http://u", []) + body), out
    )
    loaded = decode_answer(out.getvalue())
    assert len(loaded) == 1 and 1050 in loaded[0].index and 999 not in loaded[0].index
    with open(path, "rb") as f:
        assert f.read() == body
    with open(path + ".json") as f:
        meta = json.load(f)
    assert meta["url"] == "http://u"
    assert meta["trust_sha256"] == hashlib.sha256(trust_pem).hexdigest()
    # Beside it, the answer itself (its index), recorded by its digest in the meta file.
    with open(path + ".index", "rb") as f:
        index = f.read()
    assert meta["index_sha256"] == hashlib.sha256(index).hexdigest()
    (kept,) = decode_answer(index)
    assert kept.info == loaded[0].info and kept.index.entries() == loaded[0].index.entries()
    mapping, why = read_index(path, trust_pem)
    assert why == "" and bytes(mapping) == index
    # Validated against another CA bundle than today's: not used (the body is parsed).
    other = read_index(path, pki.cert_pem(root.cert))
    assert other == (None, "cacertfile changed since it was written")
    # An older body is answered but not persisted over the newer one.
    older = pem(make_crl(inter, [], number=2))
    current = [loaded[0].info]
    out = io.BytesIO()
    worker.main(
        io.BytesIO(encode_request(trust_pem, time.time(), 300, path, "http://u", current) + older),
        out,
    )
    assert json.loads(out.getvalue().split(b"\n")[0])["persisted"] is False
    with open(path, "rb") as f:
        assert f.read() == body
    # A bad body yields a refusal, not a crash.
    out = io.BytesIO()
    worker.main(
        io.BytesIO(encode_request(trust_pem, time.time(), 300, None, "u", {}) + b"junk"), out
    )
    with pytest.raises(C.CrlError) as info:
        decode_answer(out.getvalue())
    assert info.value.kind == "garbage"


def test_distribution_points() -> None:
    """http(s) distribution point URLs are read from a certificate."""
    ca = pki.make_ca()
    cert = pki.issue(ca, "d", crl_url="http://127.0.0.1:1/ca.crl").cert
    assert C.distribution_point_urls(cert) == ["http://127.0.0.1:1/ca.crl"]
    assert C.distribution_point_urls(pki.issue(ca, "e").cert) == []
