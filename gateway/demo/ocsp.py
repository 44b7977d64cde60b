"""The demo CA's OCSP responder: a twisted.web resource built on cryptography.

It answers from the CA's `openssl ca` database (index.txt), read at each request, so a
certificate revoked with `openssl ca -revoke` is answered 'revoked' at once. For the demo
only: it signs with the CA key itself and keeps no state.
"""

from __future__ import annotations

import base64
import datetime
import urllib.parse
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from twisted.web.resource import Resource

from gateway.demo.pki import Issued

MAX_REQUEST = 16 * 1024


def read_index(path: str) -> dict[int, tuple[str, datetime.datetime | None]]:
    """serial -> (V|R|E, revocation time) from an `openssl ca` index.txt."""
    out: dict[int, tuple[str, datetime.datetime | None]] = {}
    with open(path) as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 4:
                continue
            revoked_at = None
            if fields[0] == "R" and fields[2]:
                stamp = fields[2].split(",")[0]
                revoked_at = datetime.datetime.strptime(stamp, "%y%m%d%H%M%SZ").replace(
                    tzinfo=datetime.timezone.utc
                )
            out[int(fields[3], 16)] = (fields[0], revoked_at)
    return out


def answer(request_der: bytes, ca: Issued, index_path: str, lifetime: float = 3600) -> bytes:
    try:
        request = ocsp.load_der_ocsp_request(request_der)
    except ValueError:
        return ocsp.OCSPResponseBuilder.build_unsuccessful(
            ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        ).public_bytes(serialization.Encoding.DER)
    ours = ocsp.OCSPRequestBuilder().add_certificate(ca.cert, ca.cert, request.hash_algorithm)
    mine = ours.build()
    # Our CertID for certificates we issued: the name and key hashes of our CA certificate.
    name_hash = hashes.Hash(request.hash_algorithm)
    name_hash.update(ca.cert.subject.public_bytes())
    expected_name = name_hash.finalize()
    if request.issuer_name_hash != expected_name or request.issuer_key_hash != mine.issuer_key_hash:
        return ocsp.OCSPResponseBuilder.build_unsuccessful(
            ocsp.OCSPResponseStatus.UNAUTHORIZED
        ).public_bytes(serialization.Encoding.DER)
    entry = read_index(index_path).get(request.serial_number)
    if entry is None:
        status, revoked_at = ocsp.OCSPCertStatus.UNKNOWN, None
    elif entry[0] == "R":
        status, revoked_at = ocsp.OCSPCertStatus.REVOKED, entry[1]
    else:
        status, revoked_at = ocsp.OCSPCertStatus.GOOD, None
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=30)
    builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
        issuer_name_hash=request.issuer_name_hash,
        issuer_key_hash=request.issuer_key_hash,
        serial_number=request.serial_number,
        algorithm=request.hash_algorithm,
        cert_status=status,
        this_update=now,
        next_update=now + datetime.timedelta(seconds=lifetime),
        revocation_time=revoked_at or (now if status == ocsp.OCSPCertStatus.REVOKED else None),
        revocation_reason=None,
    )
    try:
        nonce = request.extensions.get_extension_for_class(x509.OCSPNonce).value
        builder = builder.add_extension(nonce, critical=False)
    except x509.ExtensionNotFound:
        pass
    builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, ca.cert)
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


class DemoOcspResponder(Resource):
    isLeaf = True

    def __init__(self, ca: Issued, index_path: str) -> None:
        super().__init__()
        self.ca = ca
        self.index_path = index_path

    def _reply(self, request: Any, der: bytes) -> bytes:
        request.setHeader(b"content-type", b"application/ocsp-response")
        return answer(der, self.ca, self.index_path)

    def render_POST(self, request: Any) -> bytes:
        return self._reply(request, request.content.read(MAX_REQUEST))

    def render_GET(self, request: Any) -> bytes:
        encoded = b"/".join(request.postpath).decode("ascii", "replace")
        try:
            der = base64.b64decode(urllib.parse.unquote(encoded), validate=True)
        except ValueError:
            der = b""
        return self._reply(request, der)
