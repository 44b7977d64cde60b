"""A resumed session's client certificate, parsed once per certificate."""

from __future__ import annotations

from cryptography.hazmat.primitives.serialization import Encoding

from gateway.demo import pki
from gateway.proxy.handshake import ParsedPeers


def test_a_certificate_is_parsed_once_and_described_as_a_full_handshake_would() -> None:
    ca = pki.make_ca("parsed peers CA")
    one, two = pki.issue(ca, "device-one").cert, pki.issue(ca, "device-two").cert
    peers = ParsedPeers(kept=2)
    der = one.public_bytes(Encoding.DER)
    subject, serial, cert = peers.describe(der)
    assert (subject, serial) == (one.subject.rfc4514_string(), format(one.serial_number, "X"))
    assert cert == one
    assert peers.describe(bytes(der))[2] is cert  # the same bytes: the parse kept
    assert peers.describe(two.public_bytes(Encoding.DER))[2] == two  # another: its own


def test_the_parsed_certificates_are_bounded() -> None:
    ca = pki.make_ca("bounded CA")
    certs = [pki.issue(ca, f"device-{i}").cert for i in range(5)]
    peers = ParsedPeers(kept=3)
    for cert in certs:
        assert peers.describe(cert.public_bytes(Encoding.DER))[2] == cert
        assert len(peers._by_der) <= 3
