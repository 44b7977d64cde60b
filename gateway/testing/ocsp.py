"""OCSP responses for tests, built with cryptography's OCSPResponseBuilder."""

from __future__ import annotations

import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from gateway import testing
from gateway.demo import pki


def response(
    cert: x509.Certificate,
    issuer: pki.Issued,
    status: str = "good",
    signer: pki.Issued | None = None,
    this_update: datetime.datetime | None = None,
    next_update: datetime.timedelta | None = datetime.timedelta(hours=1),
    include_signer: bool = False,
    nonce: bytes | None = None,
    algorithm: hashes.HashAlgorithm | None = None,
) -> bytes:
    """A signed DER OCSP response about ``cert`` (by default signed by its issuer)."""
    now = this_update or (pki.now() - datetime.timedelta(minutes=1))
    cert_status = {
        "good": ocsp.OCSPCertStatus.GOOD,
        "revoked": ocsp.OCSPCertStatus.REVOKED,
        "unknown": ocsp.OCSPCertStatus.UNKNOWN,
    }[status]
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=cert,
        issuer=issuer.cert,
        algorithm=algorithm or hashes.SHA1(),
        cert_status=cert_status,
        this_update=now,
        next_update=None if next_update is None else now + next_update,
        revocation_time=now if status == "revoked" else None,
        revocation_reason=x509.ReasonFlags.key_compromise if status == "revoked" else None,
    )
    signer = signer or issuer
    builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, signer.cert)
    if include_signer:
        builder = builder.certificates([signer.cert])
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.sign(signer.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def unsuccessful(status: ocsp.OCSPResponseStatus = ocsp.OCSPResponseStatus.TRY_LATER) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
        serialization.Encoding.DER
    )


class OpensslOcspResponder:
    """A real `openssl ocsp` responder, run once per request behind an HTTP server on
    127.0.0.1 (`openssl ocsp -port` would bind every interface). Each run re-reads
    index.txt, so revocations show at once. ``mode``: "ok", an HTTP status to answer, or
    bytes to answer with (status 200) instead of asking openssl."""

    def __init__(
        self, ca_dir: str, ca_cert: str, signer: tuple[str, str], minutes: int = 60
    ) -> None:
        import http.server
        import os
        import subprocess
        import tempfile
        import threading

        responder = self
        self.mode: str | int | bytes = "ok"
        self.hits = 0
        self.ca_dir, self.ca_cert, self.signer, self.minutes = ca_dir, ca_cert, signer, minutes

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, request: bytes) -> None:
                responder.hits += 1
                if isinstance(responder.mode, bytes):
                    self.send_response(200)
                    self.send_header("Content-Type", "application/ocsp-response")
                    self.send_header("Content-Length", str(len(responder.mode)))
                    self.end_headers()
                    self.wfile.write(responder.mode)
                    return
                if responder.mode != "ok":
                    self.send_response(int(responder.mode))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with tempfile.TemporaryDirectory() as tmp:
                    req, resp = os.path.join(tmp, "req.der"), os.path.join(tmp, "resp.der")
                    with open(req, "wb") as f:
                        f.write(request)
                    subprocess.run(
                        [
                            "openssl",
                            "ocsp",
                            "-index",
                            os.path.join(responder.ca_dir, "index.txt"),
                            "-CA",
                            responder.ca_cert,
                            "-rsigner",
                            responder.signer[0],
                            "-rkey",
                            responder.signer[1],
                            "-reqin",
                            req,
                            "-respout",
                            resp,
                            "-nmin",
                            str(responder.minutes),
                        ],
                        capture_output=True,
                        check=True,
                        timeout=30,
                    )
                    with open(resp, "rb") as f:
                        body = f.read()
                self.send_response(200)
                self.send_header("Content-Type", "application/ocsp-response")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                self._answer(self.rfile.read(length))

            def do_GET(self) -> None:  # noqa: N802
                import base64
                import urllib.parse

                self._answer(base64.b64decode(urllib.parse.unquote(self.path.rsplit("/", 1)[-1])))

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class OcspWorld:
    """A devices CA with an `openssl ca` database and a responder; servers with AIA URLs."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.p = testing.make_pki(directory)
        self.ca = pki.OpensslCA.create(os.path.join(directory, "ca"), self.p.inter)
        self.ca_cert = os.path.join(directory, "inter.pem")
        with open(self.ca_cert, "wb") as f:
            f.write(pki.cert_pem(self.p.inter.cert))
        self.signer = (self.ca_cert, os.path.join(self.ca.dir, "ca.key"))
        self.responder = OpensslOcspResponder(self.ca.dir, self.ca_cert, self.signer)

    def server_cert(
        self, name: str, key_kind: str = "ec", register: bool = True, valid_days: float = 365
    ) -> tuple[str, str]:
        issued = pki.issue(
            self.p.inter,
            "localhost",
            server=True,
            key_kind=key_kind,
            ocsp_url=self.responder.url,
            valid_days=valid_days,
        )
        paths = issued.write(self.dir, name)
        if register:
            self.ca.register(paths[0])
        return paths

    def conf(self, name: str, port: int, broker: int, cert: tuple[str, str], **extra: str) -> str:
        opts = {"certfile": cert[0], "keyfile": cert[1], "enable_ocsp_stapling": "true"}
        globals_ = extra.pop("globals", "")
        opts.update(extra)
        return testing.listener_conf(name, port, broker, self.p, opts) + globals_
