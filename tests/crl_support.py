"""Real CRLs for tests: an `openssl ca` directory, and an HTTP server on 127.0.0.1."""

from __future__ import annotations

import http.server
import os
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs

from gateway import pki

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
    issued: pki.Issued

    @classmethod
    def create(cls, directory: str, issued: pki.Issued) -> OpensslCA:
        os.makedirs(directory, exist_ok=True)
        issued.write(directory, "ca")  # ca.pem (with its chain) and ca.key
        with open(os.path.join(directory, "ca.pem"), "wb") as f:
            f.write(pki.cert_pem(issued.cert))
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

    def revoke(self, cert_path: str) -> None:
        self._openssl("-revoke", cert_path)

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
