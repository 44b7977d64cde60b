"""The admin HTTP listener (twisted.web, in the gateway's reactor).

    GET  /         the status page (HTML, no JavaScript)
    GET  /status   the status as JSON
    GET  /metrics  Prometheus exposition (prometheus_client)
    GET  /ready    200 once every listener accepts, else 503 with the reason
    GET  /live     200 while the reactor turns
    POST /refresh  fetch CRLs and OCSP now (?listener=NAME for one listener)
    POST /reload   re-read the configuration and every file it names (as SIGHUP)
    POST /drain    stop as on SIGTERM: not ready, then the paced drain, then exit 0

Access: with ``admin.token_file`` every request needs ``Authorization: Bearer <token>``
(compared in constant time), except the reading endpoints when ``admin.open_read`` is
true. Without a token (only possible on a loopback address) the reading endpoints are open
and the changing ones refused: ``/reload``, ``/refresh`` and ``/drain`` never work without
a token.

Bad requests get plain HTTP errors (404, 405 with Allow, 401, 403, 413), never a traceback
page; a request body larger than ``MAX_BODY`` is answered 413 as soon as its length is known.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import parse_qs

from prometheus_client.twisted import MetricsResource
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import http, resource, server

from gateway.admin.document import document
from gateway.admin.metrics import registry_for
from gateway.admin.page import REFRESH_CHOICES, render_html
from gateway.status import GatewayStatus

log = Logger()

MAX_BODY = 1024  # the admin API takes no body; a small one is tolerated and ignored
REQUEST_TIMEOUT = 30  # seconds of silence before an admin connection is closed
READ = "read"
CHANGE = "change"


class Control(Protocol):
    """What the admin listener asks of the gateway (``GatewayService``)."""

    def status(self) -> GatewayStatus: ...

    def alive(self) -> tuple[bool, str]: ...

    def refresh(self, listener: str | None) -> defer.Deferred[dict[str, Any]]: ...

    def reload(self, origin: str) -> defer.Deferred[dict[str, Any]]: ...

    def drain(self, origin: str) -> dict[str, Any]: ...


class AdminRequest(server.Request):
    """Refuses an oversized body as soon as its length is known (413), and keeps none of
    it; a chunked body that grows too large is cut the same way."""

    too_large = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_BODY:
            self._refuse_body()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        self._received += len(data)
        if self._received > MAX_BODY:
            self._refuse_body()
            return
        super().handleContentChunk(data)

    def _refuse_body(self) -> None:
        if self.too_large:
            return
        self.too_large = True
        super().gotLength(0)  # a content buffer exists, holding nothing
        body = f"413 request body larger than {MAX_BODY} bytes\n".encode()
        transport = self.channel.transport
        assert transport is not None
        transport.write(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        transport.loseConnection()

    def process(self) -> None:
        if self.too_large:
            return  # answered already
        super().process()


class AdminSite(server.Site):
    requestFactory = AdminRequest
    displayTracebacks = False
    noisy = False

    def log(self, request: Any) -> None:
        pass  # a scrape every few seconds would fill the log; handlers log what changes


def _send(request: Any, code: int, body: bytes, content_type: str, **headers: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", content_type.encode())
    request.setHeader(b"cache-control", b"no-store")
    for name, value in headers.items():
        request.setHeader(name.replace("_", "-").encode(), value.encode())
    return body


def _text(request: Any, code: int, text: str, **headers: str) -> bytes:
    return _send(request, code, (text + "\n").encode(), "text/plain; charset=utf-8", **headers)


def _json(request: Any, code: int, value: Any) -> bytes:
    body = json.dumps(value, indent=2, sort_keys=False).encode() + b"\n"
    return _send(request, code, body, "application/json")


class AdminResource(resource.Resource):
    """The root of the admin API: a resource tree, one child per endpoint (``/`` is the
    status page); each endpoint declares its method and who may call it."""

    def __init__(
        self, control: Control, token: bytes | None, open_read: bool, reactor: Any
    ) -> None:
        super().__init__()
        self.control = control
        self.token = token
        self.open_read = open_read
        # prometheus_client's Twisted resource serves its WSGI app from the reactor's thread
        # pool: the status records are gathered on the reactor thread (they are the
        # reactor's to change), only the formatting runs in the pool.
        registry = registry_for(_on_reactor_thread(control.status, reactor))
        self.endpoints: dict[bytes, Endpoint] = {
            b"": Page(self),
            b"status": StatusJson(self),
            b"metrics": Metrics(self, MetricsResource(registry=registry)),
            b"ready": Ready(self),
            b"live": Live(self),
            b"refresh": Refresh(self),
            b"reload": Reload(self),
            b"drain": Drain(self),
        }
        for name, child in self.endpoints.items():
            self.putChild(name, child)

    def getChild(self, path: bytes, request: Any) -> resource.Resource:
        return NotFound(self.index())

    def index(self) -> str:
        return ", ".join(
            f"{e.method.decode()} /{name.decode()}" for name, e in self.endpoints.items()
        )

    def authorize(self, request: Any, kind: str) -> bytes | None:
        """None to go on; else the 401 or 403 answer."""
        if kind == READ and (self.token is None or self.open_read):
            return None
        if self.token is None:
            return _text(
                request,
                403,
                "403 changing endpoints need a token: set admin.token_file (SIGHUP reloads)",
            )
        header = request.getHeader(b"authorization") or b""
        if isinstance(header, str):
            header = header.encode("latin-1")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
            return _text(
                request,
                401,
                "401 a valid 'Authorization: Bearer <token>' header is required",
                www_authenticate='Bearer realm="mqttgw"',
            )
        return None


class NotFound(resource.Resource):
    isLeaf = True

    def __init__(self, index: str) -> None:
        super().__init__()
        self.text = f"404 no such endpoint; try {index}"

    def render(self, request: Any) -> bytes:
        return _text(request, 404, self.text)


class Endpoint(resource.Resource):
    """One endpoint: ``kind`` says who may call it (READ or CHANGE); its ``render_*``
    methods say how. A method it has none for is a 405 before any check of the caller."""

    kind = READ
    method = b"GET"

    @property
    def allowed(self) -> tuple[bytes, ...]:
        return (b"GET", b"HEAD") if self.method == b"GET" else (self.method,)

    def __init__(self, admin: AdminResource) -> None:
        super().__init__()
        self.admin = admin

    def getChild(self, path: bytes, request: Any) -> resource.Resource:
        return NotFound(self.admin.index())

    def render(self, request: Any) -> Any:
        method = request.method.decode("latin-1")
        if method.encode() not in self.allowed:
            # 405 with Allow for every method (twisted.web answers 501 to one it does not
            # know, such as DELETE).
            allow = ", ".join(m.decode() for m in self.allowed)
            path = request.path.decode("latin-1")
            return _text(request, 405, f"405 {path} takes {self.method.decode()}", allow=allow)
        refusal = self.admin.authorize(request, self.kind)
        if refusal is not None:
            return refusal
        try:
            return super().render(request)
        except Exception:
            log.failure("admin request {path} failed", path=request.path)
            return _text(request, 500, "500 internal error (logged)")

    def later(self, request: Any, result: defer.Deferred[dict[str, Any]]) -> Any:
        """Answer with the JSON ``result`` fires with, once it does."""
        finished: list[bool] = []
        request.notifyFinish().addErrback(lambda _: finished.append(True))

        def answer(value: dict[str, Any]) -> None:
            if not finished:
                request.write(_json(request, 200 if value.get("ok", True) else 409, value))
                request.finish()

        def failed(reason: Any) -> None:
            log.failure("admin request failed", reason)
            if not finished:
                request.write(_text(request, 500, "500 internal error (logged)"))
                request.finish()

        result.addCallbacks(answer, failed)
        return server.NOT_DONE_YET


class Page(Endpoint):
    def render_GET(self, request: Any) -> bytes:
        asked = parse_qs(request.uri.partition(b"?")[2].decode("latin-1")).get("refresh", ["0"])
        refresh = int(asked[0]) if asked[0] in {str(c) for c in REFRESH_CHOICES} else 0
        html = render_html(document(self.admin.control.status()), refresh)
        return _send(request, 200, html.encode(), "text/html; charset=utf-8")


class StatusJson(Endpoint):
    def render_GET(self, request: Any) -> bytes:
        return _json(request, 200, document(self.admin.control.status()))


class Metrics(Endpoint):
    def __init__(self, admin: AdminResource, metrics: Any) -> None:
        super().__init__(admin)
        self.metrics = metrics

    def render_GET(self, request: Any) -> Any:
        return self.metrics.render(request)


class Ready(Endpoint):
    def render_GET(self, request: Any) -> bytes:
        ok, reason = self.admin.control.status().ready
        if ok:
            return _text(request, 200, "ready")
        return _text(request, 503, f"not ready: {reason}")


class Live(Endpoint):
    def render_GET(self, request: Any) -> bytes:
        ok, detail = self.admin.control.alive()
        return _text(request, 200 if ok else 503, detail)


class Refresh(Endpoint):
    kind = CHANGE
    method = b"POST"

    def render_POST(self, request: Any) -> Any:
        names = parse_qs(request.uri.partition(b"?")[2].decode("latin-1")).get("listener")
        name = names[0] if names else None
        control = self.admin.control
        if name is not None and name not in {
            ls.stats.listener for ls in control.status().listeners
        }:
            return _text(request, 404, f"404 no listener {name!r}")
        return self.later(request, control.refresh(name))


class Reload(Endpoint):
    kind = CHANGE
    method = b"POST"

    def render_POST(self, request: Any) -> Any:
        return self.later(request, self.admin.control.reload("POST /reload"))


class Drain(Endpoint):
    kind = CHANGE
    method = b"POST"

    def render_POST(self, request: Any) -> Any:
        return self.later(request, defer.succeed(self.admin.control.drain("POST /drain")))


def _on_reactor_thread(
    status: Callable[[], GatewayStatus], reactor: Any
) -> Callable[[], GatewayStatus]:
    from twisted.internet.threads import blockingCallFromThread
    from twisted.python.threadable import isInIOThread

    def call() -> GatewayStatus:
        if isInIOThread():
            return status()
        result: GatewayStatus = blockingCallFromThread(reactor, status)
        return result

    return call


def admin_site(control: Control, token: bytes | None, open_read: bool, reactor: Any) -> AdminSite:
    site = AdminSite(AdminResource(control, token, open_read, reactor), timeout=REQUEST_TIMEOUT)
    return site


__all__ = ["MAX_BODY", "AdminSite", "admin_site", "http"]
