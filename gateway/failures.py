"""Why a connection or a request failed, in plain words, never a Python repr: Twisted nests
the real reasons (as Failure objects) inside its own errors, pyOpenSSL's errors hold lists
of tuples, service_identity's hold mismatch records."""

from __future__ import annotations

from OpenSSL import SSL
from twisted.internet import error
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed, ResponseNeverReceived


def plain_reason(failure: Failure) -> str:
    """Why a request failed, in plain words, never a Python repr (Twisted's web client
    nests the real reasons, as Failure objects, inside its own errors)."""
    value = failure.value
    if value is None:
        return "unknown failure"
    if isinstance(value, (ResponseNeverReceived, ResponseFailed)):
        inner = [r for r in getattr(value, "reasons", []) if isinstance(r, Failure)]
        before = isinstance(value, ResponseNeverReceived)
        for reason in inner:
            if reason.check(error.ConnectionDone, error.ConnectionLost):
                if before:
                    return "connection closed by the server before an answer"
                return "connection closed by the server in the middle of the answer"
        if inner:
            return plain_reason(inner[0])
        return "no answer" if before else "incomplete answer"
    if isinstance(value, (ConnectionRefusedError, error.ConnectionRefusedError)):
        return "connection refused"
    if isinstance(value, error.DNSLookupError):
        return "cannot resolve the host name"
    if isinstance(value, (error.TCPTimedOutError, error.TimeoutError, TimeoutError)):
        return "connection timed out"
    if isinstance(value, error.ConnectionDone):
        return "connection closed by the server before an answer"
    if isinstance(value, error.ConnectionLost):
        return "connection lost (reset, or the network cut)"
    if isinstance(value, SSL.Error):
        return "TLS error: " + ssl_error_words(value)
    if type(value).__name__ == "VerificationError":  # service_identity's
        return "TLS error: " + verification_words(value)
    if isinstance(value, error.ConnectError):
        return value.osError and str(value.osError) or value.__class__.__name__
    text = str(value)
    if not text or "<" in text:  # a repr inside: say only what kind of error it was
        return value.__class__.__name__
    return text


def ssl_error_words(value: SSL.Error) -> str:
    """OpenSSL's reason strings of a pyOpenSSL error (its args are lists of tuples)."""
    words = []
    for entry in value.args[0] if value.args and isinstance(value.args[0], list) else []:
        if isinstance(entry, tuple) and entry:
            words.append(str(entry[-1]))
    return "; ".join(words) or "handshake failed"


def verification_words(value: BaseException) -> str:
    """service_identity's VerificationError: which name did not match."""
    mismatches = getattr(value, "errors", None) or []
    words = []
    for m in mismatches:
        wanted = getattr(m, "mismatched_id", None)
        pattern = getattr(wanted, "hostname", None) or getattr(wanted, "ip", None) or wanted
        if isinstance(pattern, bytes):
            pattern = pattern.decode("ascii", "replace")
        words.append(f"the certificate does not name {pattern}")
    return "; ".join(words) or "the certificate does not match the expected name"
