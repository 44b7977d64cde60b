"""The CRL worker: ``python -m gateway.revocation.worker``, one CRL body per run.

Runs in a child process so that parsing and verifying a large CRL (cryptography holds the
GIL for hundreds of milliseconds on a 37 MB CRL) never stalls the gateway's reactor, and so
that a hostile CRL can at worst kill this process.

stdin:  one JSON line {"trust_pem": str, "now": float, "skew": float,
        "persist": path or null, "url": str, "current": [info of each CRL held from url],
        "body_path": path or absent}, then the raw body until EOF (empty with body_path).
        A persisted body is written with its index beside it (``path.index``: this answer,
        recorded in ``path.json`` with the SHA-256 of the trust bundle it was validated
        against), so that a restart can serve it without parsing it again.
stdout: one JSON line {"ok": true, "crls": [info + {"width", "blob_len"}], "persisted": bool}
        followed by the index blobs in order (each CRL's, then for a delta CRL the index of its
        removeFromCRL entries, then for an indirect CRL those of its "sections");
        or {"ok": false, "kind", "detail"}.
A body whose CRLs are all older than the current ones is not persisted.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any, BinaryIO

from cryptography import x509

from gateway.revocation.crl import CrlError, CrlInfo, LoadedCrl, describe_loaded, load, loaded_blobs
from gateway.revocation.store import write_atomically

# The request line carries the CA bundle as PEM: generous, but a bound all the same.
MAX_HEADER = 16 * 1024 * 1024


def process(request: dict[str, Any], body: bytes) -> tuple[dict[str, Any], list[LoadedCrl]]:
    trust = x509.load_pem_x509_certificates(request["trust_pem"].encode())
    try:
        loaded = load(body, trust, float(request["now"]), float(request["skew"]))
    except CrlError as e:
        return {"ok": False, "kind": e.kind, "detail": e.detail}, []
    current = {
        (info.issuer, info.scope.key()): info
        for info in map(CrlInfo.from_json, request.get("current", []))
    }
    crls = [describe_loaded(c) for c in loaded]
    persisted = bool(request.get("persist")) and any(
        c.info.compare(current.get((c.info.issuer, c.info.scope.key()))) != "older" for c in loaded
    )
    if persisted:
        answer = {"ok": True, "crls": crls, "persisted": True}
        write_atomically(
            request["persist"],
            body,
            {"url": request.get("url"), "trust_sha256": trust_digest(request["trust_pem"])},
            index=answer_chunks(answer, loaded),
        )
    return {"ok": True, "crls": crls, "persisted": persisted}, loaded


def trust_digest(trust_pem: str) -> str:
    return hashlib.sha256(trust_pem.encode()).hexdigest()


def answer_chunks(answer: dict[str, Any], loaded: list[LoadedCrl]) -> list[bytes | memoryview]:
    """The answer as written to stdout: its JSON line, then each CRL's index blobs."""
    chunks: list[bytes | memoryview] = [json.dumps(answer).encode() + b"\n"]
    for crl in loaded:
        chunks.extend(loaded_blobs(crl))
    return chunks


def main(stdin: BinaryIO = sys.stdin.buffer, stdout: BinaryIO = sys.stdout.buffer) -> int:
    header = stdin.readline(MAX_HEADER)
    request = json.loads(header)
    body = stdin.read()
    if request.get("body_path"):  # a persisted CRL, read here rather than in the gateway
        with open(request["body_path"], "rb") as f:
            body = f.read()
    try:
        result, loaded = process(request, body)
    except Exception as e:  # reported to the gateway, which logs it and keeps the old CRL
        result, loaded = (
            {"ok": False, "kind": "worker_error", "detail": f"{type(e).__name__}: {e}"[:500]},
            [],
        )
    for chunk in answer_chunks(result, loaded):
        stdout.write(chunk)
    stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
