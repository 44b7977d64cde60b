"""Real CRLs for tests: an HTTP server on 127.0.0.1 and a large-CRL generator.

The `openssl ca` helper lives in gateway.pki (the demo uses it too).
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable
from typing import Any

from gateway.demo import pki
from gateway.demo.pki import OpensslCA

__all__ = ["CrlHttpServer", "OpensslCA", "big_crl_der"]

Route = Callable[[], tuple[int, bytes]]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: CrlHttpServer

    def do_GET(self) -> None:  # noqa: N802
        self.server.hits[self.path] = self.server.hits.get(self.path, 0) + 1
        route = self.server.routes.get(self.path)
        if route is None:
            status, body = 404, b"not found"
        else:
            status, body = route()
        if status == 0:  # hang: never answer, until the test ends
            self.server.hang.wait(60)
            return
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class CrlHttpServer(http.server.ThreadingHTTPServer):
    """Serves routes on 127.0.0.1; each route returns (status, body); status 0 hangs."""

    daemon_threads = True
    request_queue_size = 256  # (a gateway with a hundred sources connects at once)

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, Route] = {}
        self.hits: dict[str, int] = {}
        self.hang = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def serve_file(self, path: str, filename: str) -> None:
        def route() -> tuple[int, bytes]:
            with open(filename, "rb") as f:
                return 200, f.read()

        self.routes[path] = route

    def serve(self, path: str, status: int, body: bytes = b"") -> None:
        self.routes[path] = lambda: (status, body)

    def stop(self) -> None:
        self.hang.set()
        self.shutdown()
        self.server_close()

    def wait_hits(self, path: str, count: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while self.hits.get(path, 0) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path}: {self.hits.get(path, 0)} hits, wanted {count}")
            time.sleep(0.02)


def _der_len(n: int) -> bytes:
    if n < 128:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(body)) + body


def _der_int(value: int) -> bytes:
    """A DER INTEGER, minimal two's complement (negative values too)."""
    magnitude = value if value >= 0 else ~value
    return _tlv(0x02, value.to_bytes((magnitude.bit_length() + 8) // 8, "big", signed=True))


def _gtime(ts: float) -> bytes:
    import datetime

    dt = datetime.datetime.fromtimestamp(int(ts), datetime.timezone.utc)
    return _tlv(0x18, dt.strftime("%Y%m%d%H%M%SZ").encode())


_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")
_RSA_SHA256 = bytes.fromhex("300d06092a864886f70d01010b0500")


def crl_der(ca: pki.Issued, serials: list[int], number: int = 1, lifetime: float = 86400) -> bytes:
    """A CRL listing exactly ``serials``, negative ones included (cryptography's builder
    refuses those; old CAs issued them), signed by ``ca`` (EC or RSA)."""
    now = time.time()
    revoked_at = _gtime(now - 86400)
    entries = b"".join(_tlv(0x30, _der_int(s) + revoked_at) for s in serials)
    return _signed_crl(ca, entries, number, now, lifetime)


def _signed_crl(ca: pki.Issued, entries: bytes, number: int, now: float, lifetime: float) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    is_rsa = isinstance(ca.key, rsa.RSAPrivateKey)
    algorithm = _RSA_SHA256 if is_rsa else _ECDSA_SHA256
    crl_number = _tlv(0x30, bytes.fromhex("0603551d14") + _tlv(0x04, _der_int(number)))
    tbs = _tlv(
        0x30,
        _der_int(1)
        + algorithm
        + ca.cert.subject.public_bytes()
        + _gtime(now - 60)
        + _gtime(now + lifetime)
        + _tlv(0x30, entries)
        + _tlv(0xA0, _tlv(0x30, crl_number)),
    )
    if is_rsa:
        signature = ca.key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    else:
        signature = ca.key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    return _tlv(0x30, tbs + algorithm + _tlv(0x03, b"\x00" + signature))


def big_crl_der(ca: pki.Issued, count: int, number: int = 1, lifetime: float = 86400) -> bytes:
    """A CRL with ``count`` entries (random-looking 16-byte serials), signed by ``ca`` (EC or
    RSA).

    Built as DER by hand, since cryptography's builder takes minutes for a million entries.
    """
    now = time.time()
    revoked_at = _gtime(now - 86400)
    base = 0x4000_0000_0000_0000_0000_0000_0000_0000
    entries = b"".join(
        _tlv(0x30, _der_int(base + i * 0x9E3779B97F4A7C15) + revoked_at) for i in range(count)
    )
    return _signed_crl(ca, entries, number, now, lifetime)
