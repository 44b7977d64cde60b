"""A listener's listening port as a service: bound in ``privilegedStartService`` (before
twistd drops privileges), accepting only once the listener can decide a device (its first
CRL round is done), closed on stop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.config.values import format_bind
from gateway.errors import GatewayError

log = Logger()

ADMIN = "<admin>"  # the listener name of the admin listener's port

# If the first CRL round has not ended by then, the port accepts anyway (and the policy
# decides each client): a download may take crl_cache_http_timeout, processing may take
# as long again (the worker), and a persisted CRL is loaded first; plus a margin.
_READY_MARGIN = 30.0


def ready_timeout(crl_http_timeout: float) -> float:
    return crl_http_timeout * 2 + _READY_MARGIN


class ListenError(GatewayError):
    """A listener's address cannot be bound (in use, not ours, not allowed)."""

    def __init__(self, listener: str, bind: tuple[str, int], error: CannotListenError) -> None:
        cause = error.socketError
        text = getattr(cause, "strerror", None) or str(cause)
        super().__init__(
            "listen", f"cannot listen on {format_bind(bind)}: {text[:1].lower()}{text[1:]}"
        )
        self.listener = listener


class PortService(service.Service):
    """Binds the listener's port in privilegedStartService (before twistd drops privileges).

    Until ``ready`` fires (the first CRL round is done), the port does not accept:
    connections wait in the kernel's backlog instead of meeting an empty CRL cache.

    ``bind()`` returns a Deferred (an endpoint may listen asynchronously); at start, a
    bind that has failed by the time ``privilegedStartService`` returns stops the start
    with ``ListenError`` (the one line that names the listener's address), and one that
    fails later is logged and leaves the port not accepting.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        bind: tuple[str, int],
        factory: Any,
        ready: defer.Deferred[None] | None,
        reactor: IReactorTime,
        ready_timeout: float,
        listener_name: str = "?",
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.listener_name = listener_name
        self.endpoint = endpoint
        self.bind_address = bind
        self.factory = factory
        self.ready = ready
        self.reactor = reactor
        self.ready_timeout = ready_timeout
        self.port: Any = None  # the IListeningPort (and its reader: stop/startReading)
        self._on_stop = on_stop
        self._binding: defer.Deferred[Any] | None = None  # while the endpoint listens
        self._ready_seen = False
        self._waiting = False  # bound, but not reading until the first CRL round is done

    def filenos(self) -> list[int]:
        """The listening socket's descriptor (what a takeover hands over), if listening."""
        return [self.port.fileno()] if self.port is not None else []

    @property
    def accepting(self) -> bool:
        """Whether the port accepts connections now (what /ready reports)."""
        return bool(self.running) and self.port is not None and not self._waiting

    @property
    def waiting_reason(self) -> str:
        if self.port is None or not self.running:
            return "not listening"
        return (
            "waiting for its revocation data (the first CRL round, the kept OCSP answers)"
            if self._waiting
            else ""
        )

    def bind(self) -> defer.Deferred[Any]:
        """Listen (once); fires with the port, or fails with ListenError."""
        if self.port is not None:
            return defer.succeed(self.port)
        if self._binding is not None:
            return defer.fail(GatewayError("listen", f"{self.listener_name}: already binding"))
        self._binding = self.endpoint.listen(self.factory)
        return self._binding.addCallbacks(self._bound, self._not_bound)

    def _bound(self, port: Any) -> Any:
        self.port = port
        if self.ready is not None and not self.ready.called:
            port.stopReading()
            self._waiting = True
            timer = self.reactor.callLater(self.ready_timeout, self._accept, "timeout")

            def on_ready(result: None) -> None:
                if timer.active():
                    timer.cancel()
                    self._accept("ready")

            self.ready.addCallback(on_ready)
        return port

    def _not_bound(self, failure: Failure) -> Failure:
        self._binding = None  # a later start may try again
        if isinstance(failure.value, CannotListenError):
            return Failure(ListenError(self.listener_name, self.bind_address, failure.value))
        return failure

    def _bind_now(self) -> None:
        """At start: bind. A bind that failed at once stops the start (the error's one
        line); one that fails later is logged, and the port does not accept."""
        at_once = True
        failed: list[Failure] = []

        def fail(failure: Failure) -> None:
            if at_once:
                failed.append(failure)
            else:
                log.failure(
                    "listener {listener}: could not listen", failure, listener=self.listener_name
                )

        self.bind().addErrback(fail)
        at_once = False
        if failed:
            failed[0].raiseException()

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._bind_now()

    def startService(self) -> None:
        super().startService()
        if self.port is None:
            self._bind_now()
        if self._ready_seen and self.port is not None:
            self.port.startReading()

    def _accept(self, why: str) -> None:
        if why == "timeout":
            log.warn("accepting connections before the first CRL round finished (timeout)")
        self._waiting = False
        if self.running and self.port is not None:
            self.port.startReading()
        else:
            self._ready_seen = True  # startService will resume accepting

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self._on_stop is not None:
            self._on_stop()
        port, self.port = self.port, None
        self._binding = None
        return port.stopListening() if port is not None else None
