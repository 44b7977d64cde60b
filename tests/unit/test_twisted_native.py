"""Each private name of Twisted that ``gateway.twisted_native`` takes is still there and
still does what the module relies on. A Twisted release that changes one fails here, by
name, not somewhere in production."""

from __future__ import annotations

import inspect
import os
import select
from typing import Any

from twisted.internet import epollreactor, pollreactor
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

from gateway.twisted_native import _QuietHTTP11ClientFactory, quiet_agent, time_poller


class Recorder:
    def __init__(self, poller: Any, unit: float) -> None:
        self.poller, self.unit, self.polls = poller, unit, 0

    def poll(self, *args: Any) -> Any:
        self.polls += 1
        return self.poller.poll(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.poller, name)


def _turn(reactor: Any) -> None:
    reactor.doIteration(0)  # what mainLoop calls on every turn


def test_epoll_reactor_polls_through_its_poller() -> None:
    """The epoll reactor keeps an ``select.epoll`` as ``_poller`` and polls it on every turn
    of the loop; the timed stand-in sees each poll, and the reactor gets its own back."""
    reactor = epollreactor.EPollReactor()
    try:
        original = reactor._poller
        assert isinstance(original, select.epoll)
        seen: list[Recorder] = []
        restore = time_poller(reactor, lambda p, unit: seen.append(Recorder(p, unit)) or seen[-1])
        assert restore is not None and seen and seen[0].unit == 1.0
        _turn(reactor)
        _turn(reactor)
        assert seen[0].polls == 2
        restore()
        assert reactor._poller is original
    finally:
        reactor._poller.close()


def test_poll_reactor_polls_through_its_poller_in_milliseconds() -> None:
    """The poll reactor's ``_poller`` is a ``select.poll`` (timeouts in milliseconds)."""
    reactor = pollreactor.PollReactor()
    seen: list[Recorder] = []
    restore = time_poller(reactor, lambda p, unit: seen.append(Recorder(p, unit)) or seen[-1])
    assert restore is not None and seen[0].unit == 0.001
    _turn(reactor)
    assert seen[0].polls == 1
    restore()


def test_a_reactor_without_a_poller_is_left_alone() -> None:
    """A reactor with no ``_poller`` (a test's Clock) gets nothing wrapped."""
    from twisted.internet.task import Clock

    assert time_poller(Clock(), lambda p, unit: p) is None


def test_http_pool_builds_its_connections_with_its_factory_attribute() -> None:
    """``HTTPConnectionPool`` still makes each connection's factory from ``_factory``, which
    is still ``_HTTP11ClientFactory`` (a noisy Factory); the gateway's pool uses a quiet
    subclass of it."""
    assert HTTPConnectionPool._factory is _HTTP11ClientFactory
    assert "self._factory(" in inspect.getsource(HTTPConnectionPool._newConnection)
    assert issubclass(_QuietHTTP11ClientFactory, _HTTP11ClientFactory)
    assert _HTTP11ClientFactory.noisy and not _QuietHTTP11ClientFactory.noisy
    from twisted.internet.testing import MemoryReactorClock

    pool = quiet_agent(MemoryReactorClock())._pool
    assert pool._factory is _QuietHTTP11ClientFactory


def test_the_socket_servers_hooks_are_where_twisted_calls_them() -> None:
    """``SocketServer.deliver`` is ``tcp.Connection._dataReceived``, which ``doRead`` hands
    every read to; ``after_last_write`` runs where ``FileDescriptor`` calls
    ``_postLoseConnection`` once the writes after ``loseConnection`` are flushed."""
    from twisted.internet import abstract, tcp

    from gateway.twisted_native import SocketServer

    assert "_dataReceived" in inspect.getsource(tcp.Connection.doRead)
    assert list(inspect.signature(tcp.Connection._dataReceived).parameters) == ["self", "data"]
    assert "_postLoseConnection" in inspect.getsource(abstract.FileDescriptor.doWrite)
    assert abstract.FileDescriptor._postLoseConnection is not SocketServer._postLoseConnection

    class Recording(SocketServer):
        def __init__(self) -> None:  # no socket: only the hooks are exercised
            self.seen: list[object] = []

        def _dataReceived(self, data: bytes) -> object:  # what Twisted's would be given
            self.seen.append(data)
            return None

        def after_last_write(self) -> object:
            self.seen.append("closing")
            return "done"

    server = Recording()
    server.deliver(b"abc")
    assert server._postLoseConnection() == "done"  # Twisted's call reaches the public hook
    assert server.seen == [b"abc", "closing"]


def test_a_shared_listening_port_closes_without_shutting_the_socket_down() -> None:
    """A takeover's old process closes its ports: the socket another process holds keeps
    accepting (Twisted shuts a port's socket down on close unless told not to)."""
    import socket

    from twisted.internet import protocol, reactor

    from gateway.twisted_native import shared_on_close

    port = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")  # type: ignore[attr-defined]
    other = socket.socket(fileno=os.dup(port.fileno()))  # the new process's copy
    number = port.getHost().port
    shared_on_close(port)
    port.stopListening()
    client = socket.create_connection(("127.0.0.1", number), timeout=2)
    accepted, _ = other.accept()
    accepted.close()
    client.close()
    other.close()


def _server_over_socketpair() -> tuple[Any, Any, Any]:
    """A ``tcp.Connection`` on one end of a socket pair, connected, on a memory reactor:
    (transport, the other end, the reactor)."""
    import socket

    from twisted.internet import protocol, tcp
    from twisted.internet.testing import MemoryReactor

    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.settimeout(2)
    reactor = MemoryReactor()

    transport = tcp.Connection(ours, protocol.Protocol(), reactor)
    transport.connected = True
    return transport, theirs, reactor


def test_send_now_writes_at_once_when_nothing_is_queued() -> None:
    """Nothing queued: the bytes are on the socket when send_now returns, and the
    transport never waits for writability (no turn of the reactor, no epoll_ctl)."""
    from gateway.twisted_native import send_now

    transport, theirs, reactor = _server_over_socketpair()
    send_now(transport, b"hello")
    send_now(transport, memoryview(b" world"))
    assert theirs.recv(100) == b"hello world"
    assert transport not in reactor.getWriters()
    theirs.close()


def test_send_now_keeps_the_order_of_what_is_queued() -> None:
    """Bytes queued before (a write the socket did not take) go first: send_now queues
    behind them rather than jumping the queue."""
    from gateway.twisted_native import send_now

    transport, theirs, reactor = _server_over_socketpair()
    transport.write(b"first ")
    send_now(transport, b"second")
    assert transport in reactor.getWriters()
    transport.doWrite()
    assert theirs.recv(100) == b"first second"
    theirs.close()


def test_send_now_queues_what_a_full_socket_does_not_take() -> None:
    """A socket whose buffer is full takes part or nothing: the rest is queued, in order,
    and sent when the socket drains."""
    from gateway.twisted_native import send_now

    transport, theirs, reactor = _server_over_socketpair()
    block = b"x" * 65536
    total = 0
    for _ in range(200):  # bounded: the socket pair's buffers fill long before
        send_now(transport, block)
        total += len(block)
        if transport in reactor.getWriters():
            break
    assert transport in reactor.getWriters()
    got = 0
    theirs.setblocking(False)
    for _ in range(10_000):
        try:
            got += len(theirs.recv(1 << 20))
        except BlockingIOError:
            if transport not in reactor.getWriters():
                break
            transport.doWrite()
    assert got == total
    theirs.close()


def test_quick_text_log_writes_what_twisteds_formatter_writes() -> None:
    """twistd's text log observer given the quick way writes every event exactly as
    Twisted's own formatter does: the gateway's own lines (``{mqttgw_line}``, several in
    one second and across seconds, with a newline, with a system), and every other event
    (Twisted's way)."""
    import io

    from twisted.logger import LogLevel, LogPublisher, textFileLogObserver

    from gateway.twisted_native import quick_text_log

    quick_out, plain_out = io.StringIO(), io.StringIO()
    publisher = LogPublisher(textFileLogObserver(quick_out))
    plain = textFileLogObserver(plain_out)
    assert quick_text_log(publisher) == 1
    assert quick_text_log(publisher) == 0  # (once)
    base = 1_765_000_000.0
    events = [
        {"log_format": "{mqttgw_line}", "mqttgw_line": "session ended a", "log_time": base},
        {"log_format": "{mqttgw_line}", "mqttgw_line": "b\nc", "log_time": base + 0.4},
        {"log_format": "{mqttgw_line}", "mqttgw_line": "d", "log_time": base + 1.2},
        {
            "log_format": "{mqttgw_line}",
            "mqttgw_line": "e",
            "log_time": base + 1.3,
            "log_system": "w",
        },
        {"log_format": "{mqttgw_line}", "mqttgw_line": "", "log_time": base + 1.3},
        {"log_format": "x={x}", "x": 5, "log_time": base + 2.0},
        {"log_format": "{mqttgw_line}", "mqttgw_line": "no time"},
    ]
    for event in events:
        event.update(log_namespace="gateway.proxy.relay", log_level=LogLevel.info)
        publisher(dict(event))
        plain(dict(event))
    assert quick_out.getvalue() == plain_out.getvalue()
    assert quick_out.getvalue().count("\n") == 7  # (six lines, one continued; "" writes none)


def test_quick_text_log_leaves_a_sub_second_time_format_to_twisted() -> None:
    import io

    from twisted.logger import LogPublisher, textFileLogObserver

    from gateway.twisted_native import quick_text_log

    publisher = LogPublisher(textFileLogObserver(io.StringIO(), timeFormat="%H:%M:%S.%f"))
    assert quick_text_log(publisher) == 0
