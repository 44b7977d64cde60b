"""OCSP stapling for one listener: fetch, validate, refresh, persist; staple at handshake.

The stapling callback installed on the listener's SSL context is a synchronous read of
``current``: it returns the cached DER or b"" (no staple), and never raises (an exception
or None there aborts the client's handshake). Refreshes run on the shared refresh
scheduler: at the interval, and at the latest halfway to the held response's nextUpdate.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import attrs
from OpenSSL import SSL
from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.choices import OcspMethod
from gateway.clock import format_timestamp
from gateway.config.model import OcspSettings
from gateway.errors import GatewayError, describe_error
from gateway.offload import off_reactor
from gateway.reasons import FetchResult, OcspVerdict
from gateway.revocation import ocsp
from gateway.revocation.fetch import HttpFetcher
from gateway.revocation.refresh import Outcome, RefreshJob, RefreshScheduler
from gateway.revocation.store import ocsp_path, write_atomically
from gateway.status import OcspStatus

log = Logger()

REFRESH_LEAD = 0.5  # refresh at the latest halfway to the held response's nextUpdate


@attrs.define
class OcspState:
    """What an operator wants to know about the staple of one certificate."""

    certificate: str
    serial: str
    responder: str
    status: OcspVerdict | None = None  # good, revoked, or None (nothing stapled)
    produced_at: float | None = None
    this_update: float | None = None
    next_update: float | None = None
    last_fetch: float | None = None
    last_result: FetchResult | None = None
    last_error: str | None = None
    last_success: float | None = None
    last_failure: float | None = None
    failure_kinds: dict[str, int] = attrs.Factory(dict)  # since start, by error kind


def _write_in_thread(reactor: Any) -> Callable[[str, bytes, dict[str, Any]], defer.Deferred[None]]:
    def write(path: str, data: bytes, meta: dict[str, Any]) -> defer.Deferred[None]:
        return off_reactor(reactor, write_atomically, path, data, meta)

    return write


class OcspStapler(service.Service):
    """Keeps a valid OCSP response for a listener's certificate. Never raises out of a timer."""

    def __init__(
        self,
        listener: str,
        settings: OcspSettings,
        cache_dir: str | None,
        reactor: IReactorTime,
        fetcher: HttpFetcher,
        target: ocsp.OcspTarget,
        write: Callable[[str, bytes, dict[str, Any]], defer.Deferred[None]] | None = None,
        on_change: Callable[[bytes], object] = lambda der: None,
    ) -> None:
        self.listener = listener
        self.settings = settings
        self.name = f"ocsp:{listener}"
        self._cache_dir = cache_dir
        self._reactor = reactor
        self._fetcher = fetcher
        self._cert = target.cert
        self._issuer = target.issuer
        self._write = write or _write_in_thread(reactor)
        self.current: ocsp.OcspInfo | None = None
        self.state = OcspState(
            target.cert.subject.rfc4514_string(),
            format(target.cert.serial_number, "X"),
            target.responder,
        )
        self.scheduler = RefreshScheduler(reactor, on_tick=self._drop_expired)
        self.job = self.scheduler.add(
            RefreshJob(target.responder, self._refresh, settings.refresh_interval, REFRESH_LEAD)
        )
        self.requests_stapled = 0
        # the staple changed (its DER; b"": none): a master hands it to its workers
        self.on_change = on_change  # the staple changed: its DER (b"": none any more)

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
        self.scheduler.run_now(self.job)
        self.scheduler.start()

    def stopService(self) -> None:
        super().stopService()
        self.scheduler.stop()

    def first_attempt(self) -> defer.Deferred[None]:
        """Fires once the first request to the responder is over (whatever the outcome)."""
        return self.scheduler.when_attempted(self.job)

    def refresh_now(self) -> defer.Deferred[OcspStatus]:
        """Ask the responder now (joining a run in flight); fires with the staple's status."""
        return self.scheduler.run_now(self.job).addBoth(lambda _: self.status())

    def status(self) -> OcspStatus:
        s = self.state
        return OcspStatus(
            certificate=s.certificate,
            serial=s.serial,
            responder=s.responder,
            status=s.status,
            produced_at=s.produced_at,
            this_update=s.this_update,
            next_update=s.next_update,
            last_fetch=s.last_fetch,
            last_result=s.last_result,
            last_error=s.last_error,
            failures=self.job.failures,
            next_refresh=self.job.next_refresh,
            staples_sent=self.requests_stapled,
            last_success=s.last_success,
            last_failure=s.last_failure,
            failure_kinds=dict(s.failure_kinds),
        )

    def _persist_path(self) -> str | None:
        return ocsp_path(self._cache_dir, self.listener)

    def _load_persisted(self) -> None:
        path = self._persist_path()
        if path is None or not os.path.exists(path):
            return
        try:
            with open(path, "rb") as f:  # a few KB, once, at start-up
                der = f.read(ocsp.MAX_RESPONSE_SIZE + 1)
            info = ocsp.validate(der, self._cert, self._issuer, self._reactor.seconds())
        except (OSError, ocsp.OcspError) as e:
            log.info(
                "ocsp {listener}: persisted response {path} not used: {why}",
                listener=self.listener,
                path=path,
                why=e,
            )
            return
        self._accept(info, FetchResult.LOADED_FROM_DISK, persist=False)

    # -- refresh ---------------------------------------------------------------------------------

    def _drop_expired(self) -> None:
        current = self.current
        if current is not None and self._reactor.seconds() >= current.next_update:
            self.current = None
            self.state.status = None
            self.state.last_result = FetchResult.DROPPED
            self.on_change(b"")
            log.warn(
                "ocsp {listener}: response reached its nextUpdate {next_update} with no "
                "newer valid one; stapling stopped until one arrives",
                listener=self.listener,
                next_update=format_timestamp(current.next_update),
            )

    def _refresh(self) -> defer.Deferred[None]:
        nonce = ocsp.new_nonce() if self.settings.nonce else None
        request = ocsp.build_request(self._cert, self._issuer, nonce)
        responder = self.state.responder
        timeout = self.settings.http_timeout
        d: defer.Deferred[Any]
        if self.settings.request_method == OcspMethod.GET:
            url = ocsp.get_url(responder, request)
            d = self._fetcher.fetch(url, timeout, ocsp.MAX_RESPONSE_SIZE)
        else:
            d = self._fetcher.fetch(
                responder,
                timeout,
                ocsp.MAX_RESPONSE_SIZE,
                method="POST",
                body=request,
                headers={b"Content-Type": [b"application/ocsp-request"]},
            )
        d.addCallback(
            lambda der: ocsp.validate(der, self._cert, self._issuer, self._reactor.seconds(), nonce)
        )
        return d.addCallbacks(lambda info: self._accept(info, None), self._failed)

    def _schedule(self, ok: bool) -> None:
        current = self.current
        next_update = current.next_update if current is not None else None
        self.scheduler.schedule(self.job, Outcome(ok, next_update))

    def _accept(
        self, info: ocsp.OcspInfo, result: FetchResult | None, persist: bool = True
    ) -> None:
        now = self._reactor.seconds()
        previous = self.current
        if result is None:
            self.state.last_fetch = now
            self.state.last_error = None
            if previous is not None and info.this_update < previous.this_update:
                result = FetchResult.OLDER
            elif previous is not None and previous.der == info.der:
                result = FetchResult.UNCHANGED
            else:
                result = FetchResult.UPDATED
        if result is not FetchResult.OLDER:
            if previous is None or previous.der != info.der:
                self.on_change(info.der)
            self.current = info
            self.state.status = info.status
            self.state.produced_at = info.produced_at
            self.state.this_update = info.this_update
            self.state.next_update = info.next_update
        self.state.last_result = result
        if result is FetchResult.OLDER:
            self.state.last_failure = self._reactor.seconds()
            self.state.failure_kinds["older"] = self.state.failure_kinds.get("older", 0) + 1
        else:
            self.state.last_success = self._reactor.seconds()
        self._schedule(ok=True)
        if result in (FetchResult.UPDATED, FetchResult.LOADED_FROM_DISK):
            log.info(
                "ocsp {listener}: {result}; status={status} producedAt={produced} "
                "thisUpdate={this_update} nextUpdate={next_update} next refresh {next_refresh}",
                listener=self.listener,
                result=result,
                status=info.status,
                produced=format_timestamp(info.produced_at),
                this_update=format_timestamp(info.this_update),
                next_update=format_timestamp(info.next_update),
                next_refresh=format_timestamp(self.job.next_refresh),
            )
            path = self._persist_path()
            if persist and path is not None:
                self._write(path, info.der, {"responder": self.state.responder}).addErrback(
                    lambda f: log.failure("ocsp: could not persist the response", f)
                )
        if info.status is OcspVerdict.REVOKED and (
            previous is None or previous.status is not OcspVerdict.REVOKED
        ):
            log.critical(
                "ocsp {listener}: THE SERVER CERTIFICATE {subject} (serial {serial}) IS REVOKED "
                "(since {when}, reason {reason}); the revoked status is being stapled",
                listener=self.listener,
                subject=self.state.certificate,
                serial=self.state.serial,
                when=format_timestamp(info.revocation_time),
                reason=info.revocation_reason or "unspecified",
            )

    def _failed(self, reason: Failure) -> None:
        error = reason.value
        if not isinstance(error, GatewayError):
            log.failure("ocsp {listener}: unexpected failure", reason, listener=self.listener)
        self.state.last_fetch = self._reactor.seconds()
        self.state.last_result = FetchResult.ERROR
        self.state.last_error = describe_error(error)
        self.state.last_failure = self.state.last_fetch
        kind = error.kind if isinstance(error, GatewayError) else "unexpected"
        self.state.failure_kinds[kind] = self.state.failure_kinds.get(kind, 0) + 1
        self._schedule(ok=False)
        log.warn(
            "ocsp {listener}: refresh failed ({error}); {kept}; retry at {retry}",
            listener=self.listener,
            error=self.state.last_error,
            kept="keeping the previous response until its nextUpdate "
            + format_timestamp(self.current.next_update)
            if self.current is not None
            else "nothing to staple",
            retry=format_timestamp(self.job.next_refresh),
        )
