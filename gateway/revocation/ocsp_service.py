"""OCSP stapling for one listener: fetch, validate, refresh, persist; staple at handshake.

The stapling callback installed on the listener's SSL context is a synchronous read of
``current``: it returns the cached DER or b"" (no staple), and never raises (an exception
or None there aborts the client's handshake).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import attrs
from cryptography import x509
from OpenSSL import SSL
from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.config import ListenerConfig
from gateway.revocation import ocsp
from gateway.revocation.crl_service import RETRY_BASE, TICK, _iso
from gateway.revocation.fetch import FetchError, HttpFetcher
from gateway.revocation.worker import write_atomically

log = Logger()

MAX_RESPONSE_SIZE = 64 * 1024


@attrs.define
class OcspState:
    """What an operator wants to know about the staple of one certificate."""

    certificate: str
    serial: str
    responder: str
    status: str | None = None  # good | revoked | None (nothing stapled)
    produced_at: float | None = None
    this_update: float | None = None
    next_update: float | None = None
    last_fetch: float | None = None
    last_result: str | None = None  # updated, unchanged, error, loaded_from_disk, dropped
    last_error: str | None = None
    failures: int = 0
    next_refresh: float | None = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "certificate": self.certificate,
            "serial": self.serial,
            "responder": self.responder,
            "status": self.status,
            "produced_at": _iso(self.produced_at),
            "this_update": _iso(self.this_update),
            "next_update": _iso(self.next_update),
            "last_fetch": _iso(self.last_fetch),
            "last_result": self.last_result,
            "last_error": self.last_error,
            "next_refresh": _iso(self.next_refresh),
        }


def _write_in_thread(reactor: Any) -> Callable[[str, bytes, dict[str, Any]], defer.Deferred[None]]:
    def write(path: str, data: bytes, meta: dict[str, Any]) -> defer.Deferred[None]:
        return threads.deferToThreadPool(
            reactor, reactor.getThreadPool(), write_atomically, path, data, meta
        )

    return write


class OcspStapler(service.Service):
    """Keeps a valid OCSP response for a listener's certificate. Never raises out of a timer."""

    def __init__(
        self,
        listener: ListenerConfig,
        reactor: Any,
        fetcher: HttpFetcher,
        cert: x509.Certificate,
        issuer: x509.Certificate,
        responder: str,
        write: Callable[[str, bytes, dict[str, Any]], defer.Deferred[None]] | None = None,
    ) -> None:
        self.listener = listener
        self.name = f"ocsp:{listener.name}"
        self._reactor = reactor
        self._fetcher = fetcher
        self._cert = cert
        self._issuer = issuer
        self._write = write or _write_in_thread(reactor)
        self.current: ocsp.OcspInfo | None = None
        self.state = OcspState(
            cert.subject.rfc4514_string(), format(cert.serial_number, "X"), responder
        )
        self._due = 0.0
        self._in_flight: defer.Deferred[Any] | None = None
        self._loop: task.LoopingCall | None = None
        self.requests_stapled = 0

    # -- the handshake side ------------------------------------------------------------------

    def install(self, ctx: SSL.Context) -> None:
        """Install the stapling callback (on every context built for the listener)."""
        ctx.set_ocsp_server_callback(self.staple)

    def staple(self, connection: SSL.Connection, data: object) -> bytes:
        try:
            current = self.current
            if current is None:
                return b""
            self.requests_stapled += 1
            return current.der
        except Exception:  # never abort a handshake over a staple
            return b""

    # -- lifecycle -----------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._load_persisted()
        self._refresh()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self._reactor
        self._loop.start(TICK, now=False).addErrback(lambda f: log.failure("OCSP timer stopped", f))

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._in_flight is not None:
            self._in_flight.cancel()

    def snapshot(self) -> dict[str, Any]:
        return self.state.snapshot()

    def _persist_path(self) -> str | None:
        directory = self.listener.ocsp_cache_dir
        return os.path.join(directory, f"{self.listener.name}.ocsp.der") if directory else None

    def _load_persisted(self) -> None:
        path = self._persist_path()
        if path is None or not os.path.exists(path):
            return
        try:
            with open(path, "rb") as f:  # a few KB, once, at start-up
                der = f.read(MAX_RESPONSE_SIZE + 1)
            info = ocsp.validate(der, self._cert, self._issuer, self._reactor.seconds())
        except (OSError, ocsp.OcspError) as e:
            log.info(
                "ocsp {listener}: persisted response {path} not used: {why}",
                listener=self.listener.name,
                path=path,
                why=e,
            )
            return
        self._accept(info, "loaded_from_disk", persist=False)

    # -- refresh ---------------------------------------------------------------------------------

    def _tick(self) -> None:
        try:
            now = self._reactor.seconds()
            current = self.current
            if current is not None and now >= current.next_update:
                self.current = None
                self.state.status = None
                self.state.last_result = "dropped"
                log.warn(
                    "ocsp {listener}: response reached its nextUpdate {next_update} with no "
                    "newer valid one; stapling stopped until one arrives",
                    listener=self.listener.name,
                    next_update=_iso(current.next_update),
                )
            if self._in_flight is None and now >= self._due:
                self._refresh()
        except Exception:
            log.failure("OCSP refresh tick failed")

    def _refresh(self) -> None:
        try:
            self._start_refresh()
        except Exception:
            log.failure("ocsp {listener}: refresh failed to start", listener=self.listener.name)
            self._schedule(ok=False)

    def _start_refresh(self) -> None:
        nonce = ocsp.new_nonce() if self.listener.ocsp_nonce else None
        request = ocsp.build_request(self._cert, self._issuer, nonce)
        responder = self.state.responder
        timeout = self.listener.ocsp_refresh_http_timeout
        d: defer.Deferred[Any]
        if self.listener.ocsp_request_method == "get":
            d = self._fetcher.fetch(ocsp.get_url(responder, request), timeout, MAX_RESPONSE_SIZE)
        else:
            d = self._fetcher.fetch(
                responder,
                timeout,
                MAX_RESPONSE_SIZE,
                method="POST",
                body=request,
                headers={b"Content-Type": [b"application/ocsp-request"]},
            )
        d.addCallback(
            lambda der: ocsp.validate(der, self._cert, self._issuer, self._reactor.seconds(), nonce)
        )
        d.addCallbacks(lambda info: self._accept(info, None), self._failed)
        d.addErrback(lambda f: log.failure("OCSP refresh failed", f))

        def done(_: object) -> None:
            self._in_flight = None

        d.addBoth(done)
        if not d.called:
            self._in_flight = d

    def _schedule(self, ok: bool) -> None:
        now = self._reactor.seconds()
        interval = self.listener.ocsp_refresh_interval
        if ok:
            self.state.failures = 0
            delay = interval
        else:
            self.state.failures += 1
            delay = min(interval, RETRY_BASE * 2 ** (self.state.failures - 1))
        if self.current is not None:
            # Well before nextUpdate: at the latest halfway there.
            delay = min(delay, (self.current.next_update - now) / 2)
        self._due = now + max(delay, TICK)
        self.state.next_refresh = self._due

    def _accept(self, info: ocsp.OcspInfo, result: str | None, persist: bool = True) -> None:
        now = self._reactor.seconds()
        previous = self.current
        if result is None:
            self.state.last_fetch = now
            self.state.last_error = None
            if previous is not None and info.this_update < previous.this_update:
                result = "older"
            else:
                result = (
                    "unchanged" if previous is not None and previous.der == info.der else "updated"
                )
        if result != "older":
            self.current = info
            self.state.status = info.status
            self.state.produced_at = info.produced_at
            self.state.this_update = info.this_update
            self.state.next_update = info.next_update
        self.state.last_result = result
        self._schedule(ok=True)
        if result in ("updated", "loaded_from_disk"):
            log.info(
                "ocsp {listener}: {result}; status={status} producedAt={produced} "
                "thisUpdate={this_update} nextUpdate={next_update} next refresh {next_refresh}",
                listener=self.listener.name,
                result=result,
                status=info.status,
                produced=_iso(info.produced_at),
                this_update=_iso(info.this_update),
                next_update=_iso(info.next_update),
                next_refresh=_iso(self._due),
            )
            path = self._persist_path()
            if persist and path is not None:
                self._write(path, info.der, {"responder": self.state.responder}).addErrback(
                    lambda f: log.failure("ocsp: could not persist the response", f)
                )
        if info.status == "revoked" and (previous is None or previous.status != "revoked"):
            log.critical(
                "ocsp {listener}: THE SERVER CERTIFICATE {subject} (serial {serial}) IS REVOKED "
                "(since {when}, reason {reason}); the revoked status is being stapled",
                listener=self.listener.name,
                subject=self.state.certificate,
                serial=self.state.serial,
                when=_iso(info.revocation_time),
                reason=info.revocation_reason or "unspecified",
            )

    def _failed(self, reason: Failure) -> None:
        error = reason.value
        if not isinstance(error, (FetchError, ocsp.OcspError)):
            log.failure("ocsp {listener}: unexpected failure", reason, listener=self.listener.name)
        kind = getattr(error, "kind", None)
        self.state.last_fetch = self._reactor.seconds()
        self.state.last_result = "error"
        self.state.last_error = f"{kind}: {getattr(error, 'detail', error)}" if kind else str(error)
        self._schedule(ok=False)
        log.warn(
            "ocsp {listener}: refresh failed ({error}); {kept}; retry at {retry}",
            listener=self.listener.name,
            error=self.state.last_error,
            kept="keeping the previous response until its nextUpdate "
            + _iso(self.current.next_update)
            if self.current is not None
            else "nothing to staple",
            retry=_iso(self._due),
        )
