"""The treq fetcher: redirects, limits, refused connections."""

from __future__ import annotations

from typing import Any

import pytest
from treq.testing import RequestTraversalAgent
from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.resource import Resource

from gateway.revocation.fetch import MAX_REDIRECTS, FetchError, HttpFetcher


class Redirector(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        path = request.path.decode()
        if path.startswith("/hop/"):
            n = int(path.rsplit("/", 1)[1])
            request.setResponseCode(302)
            request.setHeader(b"location", b"/final" if n == 0 else f"/hop/{n - 1}".encode())
            return b""
        if path == "/big":
            return b"x" * 5000
        if path == "/ftp":
            request.setResponseCode(301)
            request.setHeader(b"location", b"ftp://example/x")
            return b""
        return b"the body"


def run(
    fetcher: HttpFetcher, stub: RequestTraversalAgent, url: str, max_size: int = 1 << 20
) -> Any:
    d = fetcher.fetch(url, 10, max_size)
    stub.flush()
    results: list[Any] = []
    d.addBoth(results.append)
    return results[0]


def test_redirects_followed_up_to_the_limit() -> None:
    """Up to MAX_REDIRECTS redirects are followed; one more is an error."""
    stub = RequestTraversalAgent(Redirector())
    fetcher = HttpFetcher(stub, Clock())
    assert run(fetcher, stub, f"http://ca.test/hop/{MAX_REDIRECTS - 1}") == b"the body"
    failure = run(fetcher, stub, f"http://ca.test/hop/{MAX_REDIRECTS}")
    assert failure.check(FetchError) and failure.value.kind == "redirects"
    failure = run(fetcher, stub, "http://ca.test/ftp")
    assert failure.value.kind == "redirects"


def test_size_limit() -> None:
    """A body over max_size is refused."""
    stub = RequestTraversalAgent(Redirector())
    failure = run(HttpFetcher(stub, Clock()), stub, "http://ca.test/big", max_size=1000)
    assert failure.check(FetchError) and failure.value.kind == "too_large"


def test_connection_refused() -> None:
    """A CA that refuses connections is a 'connect' failure, not a crash."""

    class Refusing:
        def request(self, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
            return defer.fail(error.ConnectionRefusedError("127.0.0.1:1"))

    results: list[Any] = []
    HttpFetcher(Refusing(), Clock()).fetch("http://ca.test/x", 5, 100).addBoth(results.append)
    assert results[0].check(FetchError) and results[0].value.kind == "connect"


@pytest.mark.parametrize("seconds", [5.0])
def test_deadline_covers_everything(seconds: float) -> None:
    """No answer at all within the timeout: 'timeout'."""

    class Silent:
        def request(self, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
            return defer.Deferred()

    clock = Clock()
    results: list[Any] = []
    HttpFetcher(Silent(), clock).fetch("http://ca.test/x", seconds, 100).addBoth(results.append)
    clock.advance(seconds - 0.1)
    assert results == []
    clock.advance(0.2)
    assert results[0].check(FetchError) and results[0].value.kind == "timeout"


def _ssl_error() -> Exception:
    from OpenSSL import SSL

    return SSL.Error([("SSL routines", "", "certificate verify failed")])


@pytest.mark.parametrize(
    "exc, text",
    [
        (
            ResponseNeverReceived([Failure(error.ConnectionDone())]),
            "connection closed by the server before an answer",
        ),
        (
            ResponseNeverReceived([Failure(error.ConnectionLost())]),
            "connection closed by the server before an answer",
        ),
        (
            ResponseFailed([Failure(error.ConnectionDone())]),
            "connection closed by the server in the middle of the answer",
        ),
        (error.ConnectionRefusedError("127.0.0.1:1"), "connection refused"),
        (error.DNSLookupError("ca.example"), "cannot resolve the host name"),
        (error.TCPTimedOutError(), "connection timed out"),
        (ResponseNeverReceived([Failure(_ssl_error())]), "TLS error: certificate verify failed"),
        (ValueError("<object at 0x7f>"), "ValueError"),
    ],
)
def test_fetch_failures_in_plain_words(exc: Exception, text: str) -> None:
    """Every fetch failure is logged in plain words, never with a Python repr."""

    class Failing:
        def request(self, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
            return defer.fail(exc)

    results: list[Any] = []
    HttpFetcher(Failing(), Clock()).fetch("http://ca.test/x", 5, 100).addBoth(results.append)
    assert results[0].check(FetchError) and results[0].value.kind == "connect"
    assert results[0].value.detail == f"http://ca.test/x: {text}"
    assert "<" not in results[0].value.detail and "Failure" not in results[0].value.detail


class Odd(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        if request.path == b"/nowhere":
            request.setResponseCode(302)  # no Location
            return b""
        if request.path == b"/file":
            request.setResponseCode(302)
            request.setHeader(b"location", b"file:///etc/passwd")
            return b""
        return b"answer to " + request.method

    def render_POST(self, request: Any) -> bytes:
        if request.path == b"/see-other":
            request.setResponseCode(303)
            request.setHeader(b"location", b"/after")
            return b""
        request.setResponseCode(302)
        request.setHeader(b"location", b"/after")
        return b""


def test_redirect_refusals_in_plain_words() -> None:
    """A redirect without Location, to a file: URL, or of a POST (other than 303, which
    Twisted's RedirectAgent turns into a GET) is refused with its reason, never followed
    blindly."""
    stub = RequestTraversalAgent(Odd())
    fetcher = HttpFetcher(stub, Clock())
    failure = run(fetcher, stub, "http://ca.test/nowhere")
    assert failure.value.kind == "http_status" and "without Location" in failure.value.detail
    failure = run(fetcher, stub, "http://ca.test/file")
    assert failure.value.kind == "redirects" and "non-HTTP URL" in failure.value.detail
    results: list[Any] = []
    fetcher.fetch("http://ca.test/see-other", 5, 100, "POST", b"req").addBoth(results.append)
    fetcher.fetch("http://ca.test/moved", 5, 100, "POST", b"req").addBoth(results.append)
    stub.flush()
    assert results[0] == b"answer to GET"
    assert results[1].value.kind == "redirects" and "POST" in results[1].value.detail
