"""HTTP fetching for CRLs (and OCSP) with treq: size, redirect and time limits.

The HTTP agent is injected (an ``Agent`` on the reactor's connection pool in production,
treq's ``RequestTraversalAgent`` in tests); so is the reactor that runs the deadline.
Redirects are Twisted's ``RedirectAgent``'s, at most ``MAX_REDIRECTS``, and only to
http(s) URLs; the deadline is ``Deferred.addTimeout`` over the whole exchange.
"""

from __future__ import annotations

import hashlib
from typing import Any

import treq
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import RedirectAgent
from twisted.web.error import InfiniteRedirection, PageRedirect, RedirectWithNoLocation
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer
from zope.interface import implementer

from gateway.errors import GatewayError
from gateway.failures import plain_reason

MAX_REDIRECTS = 5
_ERROR_BODY_LIMIT = 64 * 1024


class FetchError(GatewayError):
    """A download that did not yield a usable body. ``kind``: http_status, too_large,
    timeout, redirects, connect."""


class Body(list[bytes]):
    """A body as received, in chunks, and its SHA-256 (hashed chunk by chunk as it came:
    an unchanged CRL is recognised without hashing 30 MB at once on the reactor)."""

    def __init__(self) -> None:
        super().__init__()
        self.digest = hashlib.sha256()

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()


def _limited_collector(limit: int, url: str) -> tuple[Body, Any]:
    chunks = Body()
    size = [0]

    def collect(data: bytes) -> None:
        size[0] += len(data)
        if size[0] > limit:
            raise FetchError("too_large", f"{url}: body larger than {limit} bytes")
        chunks.append(data)
        chunks.digest.update(data)

    return chunks, collect


@implementer(IAgent)
class _HttpOnly:
    """An agent that asks only http(s) URLs: a redirect elsewhere (file:, ftp:, gopher:)
    is refused before anything is sent."""

    def __init__(self, agent: Any) -> None:
        self._agent = agent

    def request(
        self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None
    ) -> defer.Deferred[Any]:
        if not uri.lower().startswith((b"http://", b"https://")):
            where = uri.decode("latin-1", "replace")
            return defer.fail(FetchError("redirects", f"redirect to a non-HTTP URL {where!r}"))
        return self._agent.request(method, uri, headers, bodyProducer)


@implementer(IBodyProducer)
class _BytesBody:
    """A request body already in memory (an OCSP request: a few hundred bytes), written at
    once: no cooperator task for it."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        consumer.write(self._data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class HttpFetcher:
    """GET or POST one URL, following at most MAX_REDIRECTS redirects, within ``timeout``."""

    def __init__(self, agent: Any, reactor: IReactorTime) -> None:
        self._agent = agent
        self._reactor = reactor
        self._client = treq.client.HTTPClient(
            RedirectAgent(_HttpOnly(agent), redirectLimit=MAX_REDIRECTS),
            data_to_body_producer=_BytesBody,
        )

    def fetch(
        self,
        url: str,
        timeout: float,
        max_size: int,
        method: str = "GET",
        body: bytes | None = None,
        headers: dict[bytes, list[bytes]] | None = None,
    ) -> defer.Deferred[bytes]:
        """The body, joined (for small bodies such as OCSP responses)."""
        return self.fetch_chunks(url, timeout, max_size, method, body, headers).addCallback(
            b"".join
        )

    def fetch_chunks(
        self,
        url: str,
        timeout: float,
        max_size: int,
        method: str = "GET",
        body: bytes | None = None,
        headers: dict[bytes, list[bytes]] | None = None,
    ) -> defer.Deferred[Body]:
        """The body as received, in chunks (a large CRL is never joined on the reactor), with
        its SHA-256."""
        d = defer.ensureDeferred(self._fetch(url, max_size, method, body, headers))

        def timed_out(result: object, seconds: float) -> None:
            # Cancelling surfaces as various errors (ResponseNeverReceived, CancelledError):
            # whatever it was, the deadline passed.
            raise FetchError("timeout", f"{url}: no complete answer within {seconds:g}s")

        # One deadline for the whole exchange: redirects and body included.
        d.addTimeout(timeout, self._reactor, onTimeoutCancel=timed_out)

        def translate(failure: Any) -> Any:
            if failure.check(FetchError):
                return failure
            why = _redirect_failure(failure.value)
            if why is not None:
                raise FetchError(*why)
            raise FetchError("connect", f"{url}: {plain_reason(failure)}")

        d.addErrback(translate)
        return d

    async def _fetch(
        self,
        url: str,
        max_size: int,
        method: str,
        body: bytes | None,
        headers: dict[bytes, list[bytes]] | None,
    ) -> Body:
        response = await self._client.request(
            method,
            url,
            data=body,
            headers=Headers(headers) if headers is not None else None,
            allow_redirects=False,
        )
        if response.code != 200:
            await self._drain(response, url)
            raise FetchError("http_status", f"{url}: HTTP {response.code}")
        length = response.length
        if isinstance(length, int) and length > max_size:
            # Refused on the announced length; treq drops the connection when the
            # collector raises on the first chunk.
            _, refuse = _limited_collector(-1, url)
            try:
                await treq.collect(response, refuse)
            except FetchError:
                pass
            raise FetchError("too_large", f"{url}: Content-Length {length} > {max_size}")
        chunks, collect = _limited_collector(max_size, url)
        await treq.collect(response, collect)
        return chunks

    async def _drain(self, response: Any, url: str) -> None:
        _, collect = _limited_collector(_ERROR_BODY_LIMIT, url)
        try:
            await treq.collect(response, collect)
        except Exception:
            pass  # an error page's body is not needed; the connection is dropped


def _redirect_failure(error: BaseException | None) -> tuple[str, str] | None:
    """RedirectAgent's refusals (wrapped in ResponseFailed or not), in plain words."""
    reasons = getattr(error, "reasons", None)
    if reasons:
        error = reasons[0].value
    if isinstance(error, InfiniteRedirection):
        return "redirects", f"more than {MAX_REDIRECTS} redirects"
    if isinstance(error, RedirectWithNoLocation):
        return "http_status", f"{error.uri.decode('latin-1', 'replace')}: redirect without Location"
    if isinstance(error, PageRedirect):
        return "redirects", f"HTTP {int(error.status)} redirect of a POST (not followed)"
    if isinstance(error, FetchError):
        return error.kind, error.detail
    return None
