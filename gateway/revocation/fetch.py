"""HTTP fetching for CRLs (and OCSP) with treq: size, redirect and time limits.

The HTTP client is injected (treq's ``HTTPClient`` in production, ``StubTreq`` in tests);
so is the reactor that runs the deadline.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urljoin

import attrs
import treq
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from gateway.errors import GatewayError
from gateway.failures import plain_reason

MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)
_ERROR_BODY_LIMIT = 64 * 1024


class FetchError(GatewayError):
    """A download that did not yield a usable body. ``kind``: http_status, too_large,
    timeout, redirects, connect."""


def _limited_collector(limit: int, url: str) -> tuple[list[bytes], Any]:
    chunks: list[bytes] = []
    size = [0]

    def collect(data: bytes) -> None:
        size[0] += len(data)
        if size[0] > limit:
            raise FetchError("too_large", f"{url}: body larger than {limit} bytes")
        chunks.append(data)

    return chunks, collect


@attrs.define
class HttpFetcher:
    """GET or POST one URL, following at most MAX_REDIRECTS redirects, within ``timeout``."""

    _client: Any  # treq.client.HTTPClient or treq.testing.StubTreq
    _reactor: IReactorTime

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
    ) -> defer.Deferred[list[bytes]]:
        """The body as received, in chunks: a large CRL is never joined on the reactor."""
        d = defer.ensureDeferred(self._fetch(url, max_size, method, body, headers))
        # One deadline for the whole exchange (redirects and body included). Cancelling
        # surfaces as various errors (ResponseNeverReceived, CancelledError), hence the flag.
        timed_out: list[bool] = []

        def expire() -> None:
            timed_out.append(True)
            d.cancel()

        timer = self._reactor.callLater(timeout, expire)

        def stop_timer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        d.addBoth(stop_timer)

        def translate(failure: Any) -> Any:
            if timed_out:
                raise FetchError("timeout", f"{url}: no complete answer within {timeout:g}s")
            if failure.check(FetchError):
                return failure
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
    ) -> list[bytes]:
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._client.request(
                method, url, data=body, headers=headers, allow_redirects=False
            )
            if response.code in _REDIRECTS:
                location = response.headers.getRawHeaders(b"location", [None])[0]
                await self._drain(response, url)
                if not location:
                    raise FetchError("http_status", f"{url}: redirect without Location")
                url = urljoin(url, location.decode("latin-1"))
                if not url.lower().startswith(("http://", "https://")):
                    raise FetchError("redirects", f"redirect to a non-HTTP URL {url!r}")
                if response.code == 303:
                    method, body = "GET", None
                continue
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
        raise FetchError("redirects", f"more than {MAX_REDIRECTS} redirects")

    async def _drain(self, response: Any, url: str) -> None:
        _, collect = _limited_collector(_ERROR_BODY_LIMIT, url)
        try:
            await treq.collect(response, collect)
        except Exception:
            pass  # an error page's body is not needed; the connection is dropped
