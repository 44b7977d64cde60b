"""The WebSocket layer's own cost per MQTT message, in process, fed the same masked frames of
one 64-byte PUBLISH each and sending the same messages: wsproto alone (the edge with its
short path off), mqttgw's edge as it runs (``gateway.proxy.websocket``: whole short binary
frames read and written by its short path, everything else by wsproto), and autobahn's
Twisted server protocol.

    python bench/websocket_libraries.py        # autobahn measured if installed
                                               # (pip install autobahn: not a dependency)

Reported: microseconds per message received (frame parsed, unmasked, payload delivered)
and sent (framed), best of three runs of 20,000.
"""

from __future__ import annotations

import timeit

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Message, Request

from gateway.config.model import WebSocketSettings
from gateway.proxy.websocket import WebSocketEdge

PUBLISH = bytes([0x30, 67]) + b"\x00\x01b" + b"x" * 64
N = 20


def client_frames() -> tuple[WSConnection, bytes, list[bytes]]:
    client = WSConnection(ConnectionType.CLIENT)
    request = client.send(Request(host="localhost", target="/mqtt", subprotocols=["mqtt"]))
    return client, request, []


def per_message(run: object, count: int) -> float:
    return min(timeit.repeat(run, number=N, repeat=3)) / (N * count) * 1e6  # type: ignore[arg-type]


def edge_costs(short_path: bool) -> tuple[float, float]:
    client, request, _ = client_frames()
    edge = WebSocketEdge(WebSocketSettings(), "127.0.0.1", short_path=short_path)
    client.receive_data(edge.receive(request).out)
    assert any(isinstance(e, AcceptConnection) for e in client.events())
    frames = [client.send(Message(data=PUBLISH)) for _ in range(1000)]

    def receive() -> None:
        for frame in frames:
            edge.receive(frame)

    if short_path:
        return per_message(receive, 1000), per_message(lambda: edge.frame(PUBLISH), 1)
    message = Message(data=PUBLISH)
    return per_message(receive, 1000), per_message(lambda: edge._ws.send(message), 1)


def autobahn_costs() -> tuple[float, float] | None:
    try:
        from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    except ImportError:
        return None
    from twisted.internet.testing import StringTransport

    class Server(WebSocketServerProtocol):  # type: ignore[misc]
        def onConnect(self, request: object) -> str:  # noqa: N802
            return "mqtt"

        def onMessage(self, payload: bytes, is_binary: bool) -> None:  # noqa: N802
            pass

    factory = WebSocketServerFactory("ws://localhost/mqtt")
    factory.protocol = Server
    factory.setProtocolOptions(utf8validateIncoming=False)
    server = factory.buildProtocol(None)
    transport = StringTransport()
    server.makeConnection(transport)
    client, request, _ = client_frames()
    server.dataReceived(request)
    client.receive_data(transport.value())
    transport.clear()
    assert any(isinstance(e, AcceptConnection) for e in client.events())
    frames = [client.send(Message(data=PUBLISH)) for _ in range(1000)]

    def receive() -> None:
        for frame in frames:
            server.dataReceived(frame)

    def send() -> None:
        server.sendMessage(PUBLISH, isBinary=True)
        transport.clear()

    return per_message(receive, 1000), per_message(send, 1)


def main() -> None:
    print("us per 64-byte PUBLISH, one per WebSocket message (best of 3 x 20,000)")
    print(f"  {'':24} {'receive':>10} {'send':>10}")
    for name, short in (("wsproto alone", False), ("mqttgw's edge", True)):
        received, sent = edge_costs(short)
        print(f"  {name:24} {received:10.2f} {sent:10.2f}")
    other = autobahn_costs()
    if other is None:
        print(f"  {'autobahn':24} (not installed: pip install autobahn to compare)")
    else:
        print(f"  {'autobahn':24} {other[0]:10.2f} {other[1]:10.2f}")


if __name__ == "__main__":
    main()
