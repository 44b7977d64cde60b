"""Persistence of revocation data (CRLs by the worker, OCSP responses by a thread):
atomic writes, and where each item lives. Standard library only: the worker imports it."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any


def write_atomically(path: str, data: bytes, meta: dict[str, Any]) -> None:
    """Write ``path`` (and ``path.json``) so that a reader sees the old or the new, never half."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for target, content in ((path, data), (path + ".json", json.dumps(meta).encode())):
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(content)
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


def crl_path(directory: str | None, listener: str, url: str) -> str | None:
    """Where the last good CRL of ``url`` is kept for ``listener`` (None: not persisted)."""
    if directory is None:
        return None
    return os.path.join(directory, listener, hashlib.sha256(url.encode()).hexdigest()[:32] + ".crl")


def ocsp_path(directory: str | None, listener: str) -> str | None:
    """Where ``listener``'s last valid OCSP response is kept (None: not persisted)."""
    return os.path.join(directory, f"{listener}.ocsp.der") if directory else None
