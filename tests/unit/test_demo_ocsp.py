"""The demo CA's OCSP responder answers from its openssl index.txt."""

from __future__ import annotations

import os
import time
from typing import Any

from cryptography.x509 import ocsp as cocsp

from gateway.demo import pki
from gateway.demo.ocsp import answer
from gateway.revocation import ocsp


def test_answers_follow_the_ca_database(tmp_path: Any) -> None:
    """good, revoked (after openssl ca -revoke), unknown, another issuer, garbage."""
    root = pki.make_ca("demo root")
    devices = pki.make_ca("demo devices", issuer=root)
    ca = pki.OpensslCA.create(os.path.join(str(tmp_path), "ca"), devices)
    index = os.path.join(ca.dir, "index.txt")
    server = pki.issue(devices, "localhost", server=True)
    path, _ = server.write(str(tmp_path), "server")
    ca.register(path)

    def ask(cert: Any, issuer: Any = devices) -> ocsp.OcspInfo:
        der = answer(ocsp.build_request(cert, issuer.cert), devices, index)
        return ocsp.validate(der, cert, issuer.cert, time.time())

    assert ask(server.cert).status == "good"
    ca.revoke(path)
    assert ask(server.cert).status == "revoked"
    stranger = pki.issue(devices, "never registered").cert
    try:
        ask(stranger)
        raise AssertionError("unknown must not validate")
    except ocsp.OcspError as e:
        assert e.kind == "unknown_status"
    other = pki.issue(root, "issued by the root").cert
    unauthorized = cocsp.load_der_ocsp_response(
        answer(ocsp.build_request(other, root.cert), devices, index)
    )
    assert unauthorized.response_status == cocsp.OCSPResponseStatus.UNAUTHORIZED
    malformed = cocsp.load_der_ocsp_response(answer(b"junk", devices, index))
    assert malformed.response_status == cocsp.OCSPResponseStatus.MALFORMED_REQUEST
