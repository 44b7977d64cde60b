"""The error taxonomy shared by every concern: one base, a ``kind`` and a ``detail``.

``kind`` is a short machine-readable class (counted, logged as ``reason=``); ``detail`` is the
operator's sentence. The codec, the fetcher, CRL and OCSP validation and the configuration
each raise a subclass, so a caller can catch one concern's errors or all of them.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of mqttgw's own errors: ``kind`` (machine-readable) and ``detail`` (for people)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail

    def describe(self) -> str:
        """``kind: detail``, the form logs and status use."""
        return f"{self.kind}: {self.detail}"


def describe_error(error: BaseException | None) -> str:
    """``kind: detail`` for a GatewayError, else the exception's own text (a Failure's
    ``value`` may be typed None: "unknown error")."""
    if error is None:
        return "unknown error"
    if isinstance(error, GatewayError):
        return error.describe()
    return str(error) or error.__class__.__name__


class ConfigError(GatewayError):
    """A configuration problem, located at file:line and naming the key.

    ``str()`` is the one line an operator sees:
    ``conf/mqttgw.conf:12: listener.ssl.external.keyfile: does not match certfile``.
    """

    def __init__(self, path: str, line: int | None, key: str | None, reason: str) -> None:
        super().__init__("config", reason)
        self.path = path
        self.line = line
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.key}: {self.reason}" if self.key else f"{where}: {self.reason}"
