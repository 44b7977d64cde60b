"""The WebSocket library's own cost per MQTT message, in process: wsproto (what mqttgw uses,
through ``gateway.proxy.websocket``) beside autobahn's Twisted server protocol, fed the same
masked frames of one 64-byte PUBLISH each, and sending the same messages.

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


def wsproto_costs() -> tuple[float, float]:
    client, request, _ = client_frames()
    edge = WebSocketEdge(WebSocketSettings(), "127.0.0.1")
    client.receive_data(edge.receive(request).out)
    assert any(isinstance(e, AcceptConnection) for e in client.events())
    frames = [client.send(Message(data=PUBLISH)) for _ in range(1000)]

    def receive() -> None:
        for frame in frames:
            edge.receive(frame)

    return per_message(receive, 1000), per_message(lambda: edge.frame(PUBLISH), 1)


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
    print(f"  {'library':12} {'receive':>10} {'send':>10}")
    received, sent = wsproto_costs()
    print(f"  {'wsproto':12} {received:10.2f} {sent:10.2f}")
    other = autobahn_costs()
    if other is None:
        print("  autobahn     (not installed: pip install autobahn to compare)")
    else:
        print(f"  {'autobahn':12} {other[0]:10.2f} {other[1]:10.2f}")


if __name__ == "__main__":
    main()
