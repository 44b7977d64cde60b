"""Persistence of revocation data (CRLs by the worker, OCSP responses by a thread):
atomic writes, and where each item lives. Standard library only: the worker imports it."""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import tempfile
from typing import Any

INDEX_SUFFIX = ".index"  # beside a persisted CRL: the CRL worker's answer for it


def write_atomically(
    path: str,
    data: bytes,
    meta: dict[str, Any],
    index: list[bytes | memoryview] | None = None,
) -> None:
    """Write ``path`` (and ``path.json``) so that a reader sees the old or the new, never half.

    With ``index`` (the CRL worker's answer for ``data``, as chunks), ``path.index`` too, and
    the meta file records its SHA-256 and the trust bundle's: the meta file is written last,
    so an index that does not match it (a crash between the writes) is never used."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    files: list[tuple[str, list[bytes | memoryview]]] = []
    if index is not None:
        digest = hashlib.sha256()
        for chunk in index:
            digest.update(chunk)
        meta = dict(meta, index_sha256=digest.hexdigest())
        files.append((path + INDEX_SUFFIX, index))
    files += [(path, [data]), (path + ".json", [json.dumps(meta).encode()])]
    for target, chunks in files:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_index(path: str, trust_pem: bytes) -> tuple[Any, str]:
    """The index kept beside the persisted CRL at ``path``, memory-mapped: (mapping, "") if
    its meta file vouches for it (its SHA-256, and the same trust bundle as now), else
    (None, why not). Reads and hashes files: call it off the reactor thread."""
    try:
        with open(path + ".json", "rb") as f:
            meta = json.loads(f.read(64 * 1024))
        expected = meta.get("index_sha256") if isinstance(meta, dict) else None
        if not isinstance(expected, str):
            return None, "no index recorded"
        if meta.get("trust_sha256") != hashlib.sha256(trust_pem).hexdigest():
            return None, "cacertfile changed since it was written"
        with open(path + INDEX_SUFFIX, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return None, "empty index"
            data = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        return None, "no index kept"
    except (OSError, ValueError) as e:
        return None, f"unreadable ({e})"
    if hashlib.sha256(data).hexdigest() != expected:
        data.close()
        return None, "index does not match its record"
    return data, ""


def crl_path(directory: str | None, listener: str, url: str) -> str | None:
    """Where the last good CRL of ``url`` is kept for ``listener`` (None: not persisted)."""
    if directory is None:
        return None
    return os.path.join(directory, listener, hashlib.sha256(url.encode()).hexdigest()[:32] + ".crl")


def ocsp_path(directory: str | None, listener: str) -> str | None:
    """Where ``listener``'s last valid OCSP response is kept (None: not persisted); a
    tenant's certificate's (``<listener>/<tenant>``) beside it as ``<listener>+<tenant>``
    (a character no listener or tenant name has)."""
    name = listener.replace("/", "+")
    return os.path.join(directory, f"{name}.ocsp.der") if directory else None
