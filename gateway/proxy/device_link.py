"""The device's side of the byte stream when it may speak MQTT over WebSocket: the Twisted
adapter of ``proxy.websocket``. What the device's bytes are is decided once: by the listener
(wss), by the ALPN name the handshake settled (http/1.1; mqtt or x-amzn-mqtt-ca are MQTT), or,
where the device offered no ALPN, by its first byte (an HTTP request line starts with a
letter, an MQTT CONNECT with 0x10). A listener without WebSocket has no link at all: its
relay writes to the transport as before.

``DeviceLink.receive`` gives the MQTT bytes the device sent (its upgrade answered, its pings
ponged); the relay writes through ``write`` (each write one binary message) and pauses and
resumes through it as through the transport; ``close`` sends the close frame that says why
the gateway ends the session.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from gateway.config.model import WebSocketSettings
from gateway.proxy import websocket as W
from gateway.proxy.session_log import SessionLog
from gateway.reasons import Reason, Side


class Mode(enum.Enum):
    MQTT = "mqtt"  # MQTT straight over TLS
    WEBSOCKET = "websocket"
    SNIFF = "sniff"  # undecided: the first byte decides


# The close code of each way a WebSocket session ends on the gateway's side.
CLOSE_CODES: dict[Reason | Side, int] = {
    Side.BROKER: W.NORMAL,
    Reason.SHUTDOWN: W.GOING_AWAY,
    Reason.RELOAD: W.GOING_AWAY,
    Reason.REVOKED: W.POLICY_VIOLATION,
    Reason.DENY_LISTED: W.POLICY_VIOLATION,
    Reason.TENANT_DISABLED: W.GOING_AWAY,
    Reason.ACL_DENIED: W.POLICY_VIOLATION,
    Reason.MESSAGE_RATE: W.POLICY_VIOLATION,
    Reason.BAD_IDENTITY: W.POLICY_VIOLATION,
    Reason.BAD_PACKET: W.PROTOCOL_ERROR,
    Reason.BAD_CONNECT: W.PROTOCOL_ERROR,
}


def mode_for(websocket: WebSocketSettings | None, always: bool, alpn: bytes) -> Mode | None:
    """How the device speaks after the handshake (None: no link, MQTT as always).
    ``always``: a wss listener; ``alpn``: the name the handshake settled (b"": none)."""
    if websocket is None:
        return None
    if always or alpn == b"http/1.1":
        return Mode.WEBSOCKET
    return Mode.SNIFF if not alpn else None


def link_for(
    home: Any,
    transport: Any,
    handle: Any,
    record: SessionLog,
    refuse: Callable[[Reason, str], None],
) -> DeviceLink | None:
    """After the handshake, on a listener where devices may speak WebSocket: the device's
    link (None: MQTT over TLS, as the ALPN name it settled says)."""
    websocket = home.websocket
    alpn = handle.get_alpn_proto_negotiated() or b""  # b"": none negotiated
    mode = mode_for(websocket, home.websocket_only, alpn)
    if mode is None:
        return None
    return DeviceLink(transport, websocket, mode, record, refuse)


def plain_link(
    home: Any, transport: Any, record: SessionLog, refuse: Callable[[Reason, str], None]
) -> DeviceLink:
    """On a ws listener (no TLS: a load balancer in front ended it), from the connection's
    first byte: the device speaks WebSocket."""
    return DeviceLink(transport, home.websocket, Mode.WEBSOCKET, record, refuse, "ws")


class DeviceLink:
    """The device's transport as MQTT over WebSocket (or, until the first byte, maybe)."""

    def __init__(
        self,
        transport: Any,
        settings: WebSocketSettings,
        mode: Mode,
        record: SessionLog,
        refuse: Callable[[Reason, str], None],
        name: str = "wss",
    ) -> None:
        """``refuse(reason, detail)``: the session is to be refused or ended; ``name``: the
        transport's name in the session line (wss; ws on a listener without TLS)."""
        self.name = name
        self.transport = transport
        self.settings = settings
        self.mode = mode
        self.record = record
        self.refuse = refuse
        self.edge: W.WebSocketEdge | None = None
        if mode is Mode.WEBSOCKET:
            self._start()

    @property
    def websocket(self) -> bool:
        return self.mode is Mode.WEBSOCKET

    def _start(self) -> None:
        self.mode = Mode.WEBSOCKET
        host = self.record.peer.rpartition(":")[0].strip("[]")
        self.edge = W.WebSocketEdge(self.settings, host)
        self.record.transport = self.name

    def receive(self, data: bytes) -> bytes:
        """The MQTT bytes in ``data``."""
        edge = self.edge
        if edge is not None and edge.short:  # the common case: whole short binary frames
            if not edge.tail:
                one = W.unmask_one(data)  # exactly one (the commonest read)
                if one is not None:
                    return one
            data, before = edge.read_short(data)
            if not data:
                return before
        else:
            before = b""
            if self.mode is Mode.SNIFF:
                if data[:1].isalpha():  # an HTTP request line: GET ...
                    self._start()
                else:
                    self.mode = Mode.MQTT
                edge = self.edge
            if edge is None:
                return data
        got = edge.receive(data)
        if got.out:
            self.transport.write(got.out)
        if got.upgraded is not None:
            self.record.upgraded(got.upgraded)
        if got.refused is not None:
            self.refuse(Reason.BAD_WEBSOCKET, got.refused.why)
            return b""
        if got.closed:
            self.transport.loseConnection()  # the device closed its WebSocket: so is the session
        return before + got.mqtt

    # -- what the relay writes to, and pauses ---------------------------------------------

    def write(self, data: bytes | memoryview) -> None:
        edge = self.edge
        if edge is None:
            self.transport.write(data)
        elif edge.upgraded and not edge.done:
            self.transport.write(edge.frame(data))

    def close(self, by: Reason | Side) -> None:
        """The gateway ends the session: the close frame says why."""
        if self.edge is not None:
            self.transport.write(self.edge.close(CLOSE_CODES.get(by, W.NORMAL)))

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()
