"""The verify callback's decisions, called as OpenSSL calls it (trust anchor first)."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography import x509
from OpenSSL import SSL, crypto

from gateway.demo import pki
from gateway.peer import PeerVerification
from gateway.tls import verify
from gateway.tls.verify import CertificateVerifier, GatewayConnection


class Recording:
    """A revocation checker that records what it was asked and revokes chosen serials."""

    def __init__(self, revoked: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.revoked = revoked
        self.asked: list[tuple[x509.Certificate, bytes, int, int]] = []
        self.cas: list[x509.Certificate] = []  # intermediates noted for resumed sessions

    def note_ca(self, cert: x509.Certificate) -> None:
        self.cas.append(cert)

    def check(
        self,
        cert: x509.Certificate,
        issuer: bytes,
        serial: int,
        depth: int,
        verification: PeerVerification | None,
    ) -> tuple[str, int] | None:
        self.asked.append((cert, issuer, serial, depth))
        if serial in self.revoked:
            return "revoked", SSL.X509VerificationCodes.ERR_CERT_REVOKED
        return None


@pytest.fixture(scope="module")
def chain() -> list[x509.Certificate]:
    root = pki.make_ca("verify root")
    inter = pki.make_ca("verify devices", issuer=root)
    leaf = pki.issue(inter, "verify-device")
    return [root.cert, inter.cert, leaf.cert]


def handshake(verifier: CertificateVerifier, chain: list[x509.Certificate]) -> tuple[Any, int]:
    """One handshake's callbacks, root (depth 2) down to the leaf, each on a fresh X509 as
    OpenSSL hands them: (the connection's record, the first refusal or 0)."""
    connection = GatewayConnection(SSL.Context(SSL.TLS_METHOD), PeerVerification())
    for depth in range(len(chain) - 1, -1, -1):
        cert = crypto.X509.from_cryptography(chain[len(chain) - 1 - depth])
        code = verifier.decide(connection, cert, 0, depth, 1)
        if code:
            return connection.verification, code
    return connection.verification, 0


def test_the_chain_is_recorded_and_checked_below_the_anchor(
    chain: list[x509.Certificate],
) -> None:
    revocation = Recording()
    verifier = CertificateVerifier(revocation)
    record, code = handshake(verifier, chain)
    root, inter, leaf = chain
    assert code == 0
    assert list(record.chain) == [
        (root.issuer.public_bytes(), root.serial_number),
        (inter.issuer.public_bytes(), inter.serial_number),
        (leaf.issuer.public_bytes(), leaf.serial_number),
    ]
    # The self-issued root is not checked; the intermediate and the leaf are, in that order.
    assert [(c, i, s, d) for c, i, s, d in revocation.asked] == [
        (inter, root.subject.public_bytes(), inter.serial_number, 1),
        (leaf, inter.subject.public_bytes(), leaf.serial_number, 0),
    ]
    assert record.leaf == leaf  # handed to the relay's log line


def test_ca_certificates_are_parsed_once_and_still_checked_every_time(
    chain: list[x509.Certificate],
) -> None:
    revocation = Recording()
    verifier = CertificateVerifier(revocation)
    handshake(verifier, chain)
    handshake(verifier, chain)
    assert len(verifier._cas) == 2  # the root and the intermediate, by their DER
    first, second = revocation.asked[0][0], revocation.asked[2][0]
    assert first is second  # the intermediate: one parse for both handshakes
    assert revocation.asked[1][0] is not revocation.asked[3][0]  # a leaf is parsed each time
    # A CA revoked after it was cached is refused on the next handshake all the same.
    revocation.revoked = {chain[1].serial_number}
    record, code = handshake(verifier, chain)
    assert code == SSL.X509VerificationCodes.ERR_CERT_REVOKED
    assert record.failure is not None and record.failure.depth == 1


def test_a_full_table_stops_growing_and_decides_the_same(
    chain: list[x509.Certificate], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify, "_CAS_KEPT", 1)
    revocation = Recording({chain[2].serial_number})
    verifier = CertificateVerifier(revocation)
    for _ in range(3):
        record, code = handshake(verifier, chain)
        assert code == SSL.X509VerificationCodes.ERR_CERT_REVOKED
        assert record.failure is not None and record.failure.reason == "revoked"
    assert len(verifier._cas) == 1
