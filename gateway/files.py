"""Where a start (and a reload) reads the files the configuration names.

By default the disk, with each file's bytes and mode recorded. A worker process reads the
master's record instead: it serves exactly the bytes the master checked (no second read
that could differ), and it needs no right to read a key file only root may read.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar

import attrs


@attrs.define
class FileRecord:
    """What one ``prepare`` read: path -> (bytes, st_mode)."""

    files: dict[str, tuple[bytes, int]] = attrs.Factory(dict)
    replay: bool = False  # read from ``files`` only (a worker), never from the disk

    def read(self, path: str, limit: int | None = None) -> bytes:
        if self.replay:
            try:
                return self.files[path][0]
            except KeyError:
                raise FileNotFoundError(2, "No such file or directory", path) from None
        with open(path, "rb") as f:
            data = f.read() if limit is None else f.read(limit)
            mode = os.fstat(f.fileno()).st_mode
        self.files[path] = (data, mode)
        return data

    def mode(self, path: str) -> int:
        if path in self.files:
            return self.files[path][1]
        if self.replay:
            raise FileNotFoundError(2, "No such file or directory", path)
        return os.stat(path).st_mode

    @classmethod
    def replaying(cls, files: Mapping[str, tuple[bytes, int]]) -> FileRecord:
        return cls(dict(files), replay=True)


_current: ContextVar[FileRecord | None] = ContextVar("mqttgw_files", default=None)


def read(path: str, limit: int | None = None) -> bytes:
    """The file's bytes (OSError as ``open`` raises it), recorded in the current record."""
    record = _current.get()
    if record is None:
        with open(path, "rb") as f:
            return f.read() if limit is None else f.read(limit)
    return record.read(path, limit)


def mode(path: str) -> int:
    record = _current.get()
    return os.stat(path).st_mode if record is None else record.mode(path)


@contextlib.contextmanager
def reading(record: FileRecord) -> Iterator[FileRecord]:
    """Every ``read``/``mode`` within goes through ``record``."""
    token = _current.set(record)
    try:
        yield record
    finally:
        _current.reset(token)
