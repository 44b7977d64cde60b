"""The only module that touches Twisted's private names, for the two things its public API
cannot do. Each use has a test (``tests/unit/test_twisted_native.py``) that fails loudly
when a Twisted release changes what it relies on.

- ``time_poller``: reactor lag measured at every turn of the loop. Only the reactor's
  poller separates waiting for sockets from working: ``doIteration``, the public method
  around it, also runs every socket callback, so timing it would count the work of a
  handshake as waiting. The poller (``_poller`` of the epoll and poll reactors) is wrapped
  while the monitor runs and given back when it stops.
- ``quiet_agent``: the HTTP agent of CRL and OCSP fetches, without a "Starting factory" log
  line for every fetch. ``HTTPConnectionPool`` takes no factory argument and the line comes from
  its private ``_HTTP11ClientFactory``; twistd owns the log observers, so it cannot be
  filtered out before they see it.
- ``SocketServer``: the base of ``tls.bio_transport.BioTLSServer`` (``tls_io =
  transport``), a ``tcp.Server`` whose bytes go through OpenSSL. Two hooks of Twisted's
  connection have no public name: ``tcp.Connection._dataReceived`` (bytes read, to the
  protocol, with the return value that ends the connection) is called as ``deliver``, and
  ``FileDescriptor._postLoseConnection`` (everything written: now close) is overridden as
  ``after_last_write``, where TLS sends its close_notify.
- ``send_now``: a write that goes to the socket at once when nothing is queued before it
  (the reactor's ``write`` always queues and waits for the next writability event: two
  ``epoll_ctl`` calls and a turn of the loop per write, a fifth of a resumed handshake's
  cost). It reads the write buffer Twisted keeps (``dataBuffer``, ``offset``,
  ``_tempDataBuffer``) and queues what the socket did not take with the public ``write``.
- ``quick_text_log``: twistd's text log files write the lines mqttgw formats itself (the
  session lines, a worker's lines re-emitted by the master: ``{mqttgw_line}``) with the
  time text made once per second, not once per line (Twisted's ``formatTime`` builds a
  time zone and a datetime for every event: a third of a session line's cost). The file
  observers are found among the log publisher's ``_observers``; their ``formatEvent`` is
  public. Every other event is formatted by Twisted's own ``formatEvent``, unchanged.
- ``adopt_listening_socket``: a listening port of mqttgw's own kind (``BioTLSPort``) on an
  inherited socket (systemd's, one a takeover handed over, a worker's from its master), as
  ``adoptStreamPort`` does for Twisted's own ``tcp.Port`` (``_preexistingSocket``, which
  ``startListening`` uses instead of binding; it then leaves the socket unshut at close).
- ``shared_on_close``: a listening port whose socket a takeover handed to another process
  is closed without ``shutdown()``, which would end the other process's accepts too
  (``tcp.Port._shouldShutdown``, which Twisted clears itself only for adopted sockets).
"""

from __future__ import annotations

import select
from collections.abc import Callable
from errno import EAGAIN, EINTR, EWOULDBLOCK
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory


def time_poller(reactor: Any, wrap: Callable[[Any, float], Any]) -> Callable[[], None] | None:
    """Replace the reactor's poller by ``wrap(poller, unit)`` (``unit``: seconds per unit
    of the poller's timeout, 1 for epoll, 0.001 for poll). Returns the function that gives
    the reactor its poller back, or None where the reactor has no poller (a test's Clock,
    select, another platform)."""
    poller = getattr(reactor, "_poller", None)
    if poller is None or not hasattr(poller, "poll") or not hasattr(poller, "modify"):
        return None
    unit = 1.0 if isinstance(poller, getattr(select, "epoll", ())) else 0.001
    timed = wrap(poller, unit)
    reactor._poller = timed

    def restore() -> None:
        if getattr(reactor, "_poller", None) is timed:
            reactor._poller = poller

    return restore


class _QuietHTTP11ClientFactory(_HTTP11ClientFactory):
    noisy = False  # no "Starting factory" line for every CRL or OCSP fetch


def quiet_agent(reactor: IReactorTime, persistent: bool = False) -> Agent:
    """An HTTP agent on the given reactor, without per-connection log noise (``persistent``:
    keeping its connections open between requests)."""
    pool = HTTPConnectionPool(reactor, persistent=persistent)
    pool._factory = _QuietHTTP11ClientFactory
    return Agent(reactor, pool=pool)


class SocketServer(tcp.Server):
    """``tcp.Server`` with its two private hooks under public names (see the docstring)."""

    def deliver(self, data: bytes) -> Any:
        """Bytes read from the socket, to the protocol (what ``doRead`` does with them)."""
        return self._dataReceived(data)

    def after_last_write(self) -> Any:
        """Everything written after ``loseConnection``: what to do now (None: wait for the
        socket again; a reason: close). By default, close."""
        return super()._postLoseConnection()

    def _postLoseConnection(self) -> Any:
        return self.after_last_write()


_WOULD_BLOCK = (EAGAIN, EWOULDBLOCK, EINTR)


def send_now(transport: Any, data: bytes | memoryview) -> None:
    """``transport.write(data)``, sent on the socket now when nothing is queued before it
    and the transport is a plain TCP one (what the socket does not take, and every other
    case, goes through ``write``: queued, sent when the socket is writable; an error is
    left for that write to find)."""
    if not isinstance(transport, tcp.Connection) or transport.TLS:
        transport.write(data)
        return
    if isinstance(data, memoryview):
        data = data.tobytes()  # (what Twisted's write takes)
    if (
        data
        and transport.connected
        and not transport._writeDisconnected
        and not transport._tempDataBuffer
        and transport.offset == len(transport.dataBuffer)
    ):
        try:
            sent = transport.socket.send(data)
        except OSError as e:
            sent = 0
            if e.args[0] not in _WOULD_BLOCK:
                tcp.Connection.write(transport, data)  # (its doWrite meets the error)
                return
        if sent == len(data):
            return
        data = data[sent:]
    tcp.Connection.write(transport, data)


def quick_text_log(publisher: Any = None) -> int:
    """Give the text file observers of ``publisher`` (the global one by default) the quick
    way for ``{mqttgw_line}`` events; how many were given it (0 where none is found, or
    where their time format is finer than a second and so cannot be kept per second)."""
    from twisted.logger import FileLogObserver, globalLogPublisher

    observers = getattr(
        publisher if publisher is not None else globalLogPublisher, "_observers", ()
    )
    count = 0
    for observer in list(observers):
        if isinstance(observer, FileLogObserver) and not getattr(
            observer.formatEvent, "mqttgw_quick", False
        ):
            quick = _quick_format(observer.formatEvent)
            if quick is not None:
                observer.formatEvent = quick
                count += 1
    return count


def _quick_format(original: Callable[[dict[str, Any]], str | None]) -> Any:
    """``original`` (a ``formatEventAsClassicLogText`` with its time format), with the time
    text of ``{mqttgw_line}`` events taken from ``original`` once per second. None if the
    time text differs within a second (a format with fractions)."""

    def stamp(when: float) -> str | None:
        text = original({"log_format": "x", "log_time": when, "log_system": "-"})
        if not text or not text.endswith(" [-] x\n"):
            return None
        return text[: -len(" [-] x\n")]

    if stamp(1_000_000_000.0) != stamp(1_000_000_000.75):
        return None
    cached: list[Any] = [None, ""]  # (the second, its time text)

    def format_event(event: dict[str, Any]) -> str | None:
        line = event.get("mqttgw_line")
        when = event.get("log_time")
        if (
            not isinstance(line, str)
            or not line
            or when is None
            or event.get("log_format") != "{mqttgw_line}"
            or "log_failure" in event
        ):
            return original(event)
        second = int(when)
        if cached[0] != second:
            text = stamp(second)
            if text is None:
                return original(event)
            cached[0], cached[1] = second, text
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{level.name if level else '-'}"
        return f"{cached[1]} [{system}] {line}".replace("\n", "\n\t") + "\n"

    format_event.mqttgw_quick = True  # type: ignore[attr-defined]
    return format_event


def adopt_listening_socket(port: Any, given: Any) -> None:
    """Make ``port`` (a ``tcp.Port`` not yet listening) listen on ``given``, a listening
    socket bound where the port would bind (a copy is kept; ``given`` is closed)."""
    import socket

    if not isinstance(port, tcp.Port):
        raise TypeError(f"not a TCP port: {port!r}")
    copy = socket.fromfd(given.fileno(), given.family, socket.SOCK_STREAM)
    given.close()
    copy.setblocking(False)
    port._preexistingSocket = copy


def shared_on_close(port: Any) -> None:
    """``port`` (a ``tcp.Port``, or a unix one) shares its socket with another process now:
    closing it closes this process's descriptor only."""
    if isinstance(port, tcp.Port):
        port._shouldShutdown = False
