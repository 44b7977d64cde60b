"""Errors raised while loading configuration."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration problem, located at file:line and naming the key.

    ``str()`` is the one line an operator sees:
    ``conf/mqttgw.conf:12: listener.ssl.external.keyfile: does not match certfile``.
    """

    def __init__(self, path: str, line: int | None, key: str | None, reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.line = line
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.key}: {self.reason}" if self.key else f"{where}: {self.reason}"
