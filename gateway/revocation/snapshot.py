"""A listener's CRL cache as one file that every worker process maps (sans-IO).

The master writes the CRLs it holds (``encode_snapshot``: a JSON line, then the index
entries, the CRL worker's answer format with each CRL's source URL) to a new file in its
runtime directory; each worker memory-maps it and ``decode_snapshot`` wraps the mapping in
``SerialIndex`` objects without copying. The pages are the kernel's page cache, shared by
every process: a 1,000,000-entry CRL is held once, whatever the number of workers. A
mapping is released when the last index referring to it is dropped (the next snapshot).
"""

from __future__ import annotations

import json
import mmap
import os
from typing import Any

from gateway.revocation.crl import (
    CrlError,
    LoadedCrl,
    decode_answer,
    describe_loaded,
    loaded_blobs,
)

FORMAT = 1


def encode_snapshot(items: list[tuple[str, LoadedCrl]]) -> list[bytes | memoryview]:
    """The file's content as chunks (views into the held indexes: written, never joined)."""
    header: dict[str, Any] = {
        "ok": True,
        "format": FORMAT,
        "crls": [dict(describe_loaded(crl), url=url) for url, crl in items],
    }
    chunks: list[bytes | memoryview] = [json.dumps(header).encode() + b"\n"]
    for _, crl in items:
        chunks.extend(loaded_blobs(crl))
    return chunks


def decode_snapshot(data: Any) -> list[tuple[str, LoadedCrl]]:
    """The (source URL, CRL) pairs of a snapshot (bytes or an mmap); CrlError if it is not
    one. The indexes refer to ``data`` in place."""
    end = data.find(b"\n")
    if end < 0:
        raise CrlError("snapshot", "not a CRL snapshot")
    try:
        header = json.loads(bytes(data[:end]))
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise CrlError("snapshot", "not a CRL snapshot of this version")
        urls = [str(item["url"]) for item in header["crls"]]
        return list(zip(urls, decode_answer(data), strict=True))
    except CrlError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, ArithmeticError) as e:
        raise CrlError("snapshot", f"malformed CRL snapshot ({type(e).__name__})") from None


def map_snapshot(path: str) -> list[tuple[str, LoadedCrl]]:
    """The snapshot file at ``path``, memory-mapped read-only and decoded in place
    (OSError if it cannot be opened, CrlError if it is not a snapshot)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        data: Any = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) if size else b""
    return decode_snapshot(data)
