"""MQTT over WebSocket, the device's side of it, sans-IO: wsproto (python-hyper's sans-IO
WebSocket, the h11 family) does the HTTP upgrade and the framing; this module decides what
is admitted and turns frames into the MQTT byte stream and back. No Twisted, no I/O.

``WebSocketEdge.receive(data)`` takes the bytes the device sent (the upgrade request, then
frames, split anywhere) and returns ``Received``: the MQTT bytes they carried (the payloads
of binary messages, in order: an MQTT packet may span frames and a frame may hold several
packets), the bytes to send back (the 101 or an HTTP error, pongs, the answer to a close),
and what happened (``Upgrade``, ``Refusal``, the device's close). ``frame(mqtt)`` wraps the
gateway's bytes as one binary message; ``close(code)`` is the gateway's close frame.

Refused, each with its HTTP status or close code and a reason for the log: a request that is
not a WebSocket upgrade (400), another path than ``mqtt_path`` (404), no subprotocol the
listener supports with ``fail_if_no_subprotocol`` (400), an Origin not allowed (403), an
upgrade request over 16 KiB (h11's bound; 400); after the upgrade, a text message (1003),
a message over ``max_frame_size`` (1009, once that many bytes have come: nothing larger is
ever held), anything wsproto finds malformed (1002).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import attrs
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from gateway.config.model import WebSocketSettings

# Close codes (RFC 6455, 7.4.1).
NORMAL = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
UNSUPPORTED_DATA = 1003
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009

# Frames of one size from which the short path unmasks them column by column (``unmask_run``).
RUN = 16


@attrs.frozen
class Upgrade:
    """The device's upgrade, accepted: the subprotocol chosen, its Origin, and the address a
    trusted proxy named it by (None: its own)."""

    subprotocol: str | None
    origin: str | None
    forwarded: tuple[str, int | None] | None


@attrs.frozen
class Refusal:
    """Why the device is refused: an HTTP status before the upgrade, a close code after."""

    why: str
    status: int | None = None
    code: int | None = None


@attrs.frozen
class Received:
    mqtt: bytes = b""  # the MQTT bytes the device's binary messages carried
    out: bytes = b""  # to send to the device
    upgraded: Upgrade | None = None
    refused: Refusal | None = None
    closed: bool = False  # the device closed the WebSocket (its close answered)


class WebSocketEdge:
    """One device's WebSocket: the upgrade, then its messages."""

    def __init__(
        self, settings: WebSocketSettings, peer_host: str, short_path: bool = True
    ) -> None:
        """``short_path``: False has wsproto read every frame (the reference the tests
        hold the short path to)."""
        self.settings = settings
        self.peer_host = peer_host
        self._short_path = short_path
        self._ws = WSConnection(ConnectionType.SERVER)
        self._message = 0  # bytes of the binary message being received
        self.upgraded = False
        self.done = False  # refused or closed: nothing more is read
        # The short path (``read_short``): on from the upgrade until the first frame of
        # another shape, then wsproto reads everything; ``_tail``: a short frame cut by the
        # read, held for the next (at most 130 bytes).
        self.short = False
        self.tail = b""

    def receive(self, data: bytes) -> Received:
        if self.done or not data:  # (wsproto takes b"" for the end of the connection)
            return Received()
        before = b""
        if self.short:
            data, before = self.read_short(data)
            if not data:
                return Received(before)
        try:
            self._ws.receive_data(data)
            got = self._events()
            if got.upgraded is not None and data.endswith(b"\r\n\r\n"):
                # Nothing came after the request (wsproto holds no part of a frame): the
                # short path may take over from the next read.
                self.short = self._short_path and self.settings.max_message_size >= 125
            if before:  # what the short path read before it stepped aside
                got = attrs.evolve(got, mqtt=before + got.mqtt)
            return got
        except RemoteProtocolError as e:
            return self._refuse(Refusal(f"malformed: {e}", status=400, code=PROTOCOL_ERROR))
        except Exception as e:  # whatever else the library finds wrong: the device's fault
            why = f"malformed: {e.__class__.__name__}: {e}"
            return self._refuse(Refusal(why, status=400, code=PROTOCOL_ERROR))

    def read_short(self, data: bytes) -> tuple[bytes, bytes]:
        """The common case, read here rather than by wsproto (which costs some 11 us a
        frame, bench/websocket_libraries.py): whole, final, masked binary frames of at most
        125 bytes, each one MQTT message. Their payloads are returned; what is left
        from the first frame of any other shape (a ping, a close, a longer or fragmented
        message, anything malformed) is returned, and from then on wsproto reads it all,
        from a frame boundary: wsproto never sees a frame cut in two. Held to wsproto's
        answer for any bytes by a hypothesis test (tests/unit/test_websocket.py). Returns
        (what is left for wsproto, the MQTT bytes read).

        Unmasked without a Python step per byte: one frame alone (``unmask_one``); a read
        that opens with a run of frames of one size, column by column (``unmask_run``);
        the others by walking their headers, then one XOR of the whole stretch with a
        mask stream built from each frame's key (``unmask_frames``)."""
        if self.tail:
            data = self.tail + data
            self.tail = b""
        else:
            one = unmask_one(data)
            if one is not None:
                return b"", one
        out = []
        pos, n = 0, len(data)
        size = data[1] - 0x7A if n >= 2 and data[0] == 0x82 and 0x80 < data[1] <= 0xFD else 0
        if size and n // size >= RUN:  # perhaps a run of one size
            count, payloads = unmask_run(data, 0, size, min(n // size, 4096))
            if payloads:
                out.append(payloads)
                pos = count * size
        starts = []
        while pos < n:
            if n - pos < 2:
                if data[pos] != 0x82:
                    break
                self.tail = data[pos:]
                break
            b1 = data[pos + 1]
            if data[pos] != 0x82 or b1 < 0x80 or b1 > 0xFD:  # FIN+binary, masked, <= 125
                break
            end = pos + b1 - 0x7A  # 6 bytes of header and key, then the payload
            if end > n:
                self.tail = data[pos:]
                break
            starts.append(pos)
            pos = end
        if starts:
            out.append(unmask_frames(data, starts, pos))
        mqtt = b"".join(out)
        if pos >= n or self.tail:
            return b"", mqtt
        self.short = False  # another shape: wsproto from here on
        return data[pos:], mqtt

    def frame(self, data: bytes | memoryview) -> bytes:
        """The gateway's bytes to the device, as one binary message (final, unmasked, as a
        server sends: RFC 6455 5.2; what wsproto writes, written here: it runs for every
        message)."""
        n = len(data)
        if n < 126:
            return bytes((0x82, n)) + data
        if n < 65536:
            return bytes((0x82, 126)) + n.to_bytes(2, "big") + data
        return bytes((0x82, 127)) + n.to_bytes(8, "big") + data

    def close(self, code: int = NORMAL, reason: str = "") -> bytes:
        """The gateway's close frame (b"" before the upgrade, or once closing)."""
        if not self.upgraded or self._ws.state is not ConnectionState.OPEN:
            return b""
        self.done, self.short = True, False
        return self._ws.send(CloseConnection(code=code, reason=reason))

    def _events(self) -> Received:
        mqtt: list[bytes] = []
        out: list[bytes] = []
        upgraded: Upgrade | None = None
        ping: Ping | None = None
        for event in self._ws.events():
            if isinstance(event, Request):
                decided = self._upgrade(event)
                if isinstance(decided, Refusal):
                    return self._refuse(decided, mqtt, out)
                upgraded = decided
                self.upgraded = True
                out.append(self._ws.send(AcceptConnection(subprotocol=decided.subprotocol)))
            elif isinstance(event, BytesMessage):
                self._message += len(event.data)
                if self._message > self.settings.max_message_size:
                    too_big = f"a message over max_frame_size ({self.settings.max_message_size})"
                    return self._refuse(Refusal(too_big, code=MESSAGE_TOO_BIG), mqtt, out)
                if event.message_finished:
                    self._message = 0
                mqtt.append(bytes(event.data))
            elif isinstance(event, TextMessage):
                refusal = Refusal("a text message (MQTT is binary)", code=UNSUPPORTED_DATA)
                return self._refuse(refusal, mqtt, out)
            elif isinstance(event, Ping):
                ping = event  # answered once per read: the last one (RFC 6455 5.5.3)
            elif isinstance(event, CloseConnection):
                out.append(self._ws.send(event.response()))
                self.done, self.short = True, False
                return Received(b"".join(mqtt), b"".join(out), upgraded, closed=True)
        if ping is not None:  # a flood of pings gets no more bytes back than it sent
            out.append(self._ws.send(ping.response()))
        return Received(b"".join(mqtt), b"".join(out), upgraded)

    def _upgrade(self, request: Request) -> Upgrade | Refusal:
        settings = self.settings
        path = urlsplit(request.target).path
        if path != settings.path:
            return Refusal(f"path {path[:100]!r} is not {settings.path}", status=404)
        offered = [p.strip() for p in request.subprotocols]
        chosen = next((p for p in settings.subprotocols if p in offered), None)
        if chosen is None and settings.fail_if_no_subprotocol:
            what = ", ".join(offered)[:200] if offered else "none"
            return Refusal(f"no supported subprotocol (offered: {what})", status=400)
        headers = {name.lower(): value for name, value in request.extra_headers}
        origin = _text(headers.get(b"origin"))
        if settings.check_origin and origin is not None:
            if origin not in settings.allowed_origins:
                return Refusal(f"origin {origin[:200]!r} is not allowed", status=403)
        return Upgrade(chosen, origin, self._forwarded(headers))

    def _forwarded(self, headers: dict[bytes, bytes]) -> tuple[str, int | None] | None:
        """The device's address as a trusted proxy names it (the address the proxy itself
        saw: the last of a list), else None."""
        settings = self.settings
        if not settings.trusted_proxies or not _within(self.peer_host, settings.trusted_proxies):
            return None
        value = _text(headers.get(settings.address_header.encode()))
        if not value:
            return None
        host = value.split(",")[-1].strip()
        try:
            host = str(ipaddress.ip_address(host.strip("[]")))
        except ValueError:
            return None  # not an address: not believed
        port_text = _text(headers.get(settings.port_header.encode())) or ""
        port = int(port_text) if port_text.isdigit() and 0 < int(port_text) < 65536 else None
        return host, port

    def _refuse(
        self, refusal: Refusal, mqtt: list[bytes] | None = None, out: list[bytes] | None = None
    ) -> Received:
        self.done, self.short = True, False
        sent = list(out or [])
        if self.upgraded:
            if self._ws.state is ConnectionState.OPEN and refusal.code is not None:
                sent.append(self._ws.send(CloseConnection(code=refusal.code, reason="")))
        elif refusal.status is not None:
            sent.append(self._http_error(refusal.status, refusal.why))
        return Received(b"".join(mqtt or []), b"".join(sent), refused=refusal)

    def _http_error(self, status: int, why: str) -> bytes:
        body = (why + "\n").encode("utf-8", "replace")
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]
        try:
            reject = RejectConnection(status_code=status, headers=headers, has_body=True)
            return self._ws.send(reject) + self._ws.send(RejectData(data=body))
        except Exception:  # the HTTP layer is past answering (a request it could not read)
            reason = {400: "Bad Request", 403: "Forbidden", 404: "Not Found"}.get(status, "Error")
            head = (
                f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            )
            return head.encode("ascii") + body


def unmask_one(data: bytes) -> bytes | None:
    """The payload when ``data`` is exactly one whole, final, masked binary frame of 1 to
    125 bytes (the common case: one MQTT packet a message, one message a read), else None."""
    n = len(data)
    if n > 6 and data[0] == 0x82 and data[1] - 0x80 == n - 6 < 126:
        k = (n - 3) >> 2  # the mask's repeats: the payload rounded up to whole words
        word = int.from_bytes(data[6:], "little") ^ int.from_bytes(data[2:6] * k, "little")
        return word.to_bytes(k * 4, "little")[: n - 6]
    return None


def unmask_frames(data: bytes, starts: list[int], stop: int) -> bytes:
    """The payloads of the short masked frames that start at ``starts`` and end at ``stop``
    (walked and checked by the caller): one XOR of the stretch with a stream of each
    frame's key, laid from its payload's first byte (RFC 6455 5.3), then the payloads cut."""
    begin = starts[0]
    ends = [*starts[1:], stop]
    keys = b"".join(
        [
            (data[s + 2 : s + 6] * ((e - s + 5) >> 2))[2 : 2 + e - s]
            for s, e in zip(starts, ends, strict=True)
        ]
    )
    length = stop - begin
    plain = (int.from_bytes(data[begin:stop], "little") ^ int.from_bytes(keys, "little")).to_bytes(
        length, "little"
    )
    return b"".join([plain[s - begin + 6 : e - begin] for s, e in zip(starts, ends, strict=True)])


def unmask_run(data: bytes, pos: int, size: int, count: int) -> tuple[int, bytes]:
    """The run of frames of one shape at ``pos`` (up to ``count`` frames of ``size`` bytes,
    the first one already checked as a short masked binary frame of at least one byte): how
    many frames it holds, and, when that is at least ``RUN``, their payloads, unmasked column
    by column: one XOR of two big integers per payload byte position, across all the frames
    (a device writing fixed-size messages fast: per frame, the loop of ``read_short`` costs
    about 1 us, this about 0.1 us). Fewer than ``RUN``: b"" (the caller reads them one by one)."""
    end = pos + count * size
    head, length = data[pos : pos + 2], size - 6
    differ = int.from_bytes(data[pos:end:size], "big") ^ int.from_bytes(head[:1] * count, "big")
    differ |= int.from_bytes(data[pos + 1 : end : size], "big") ^ int.from_bytes(
        head[1:] * count, "big"
    )
    if differ:  # the first frame of another shape: the highest byte that differs
        count -= 1 + (differ.bit_length() - 1) // 8
        if count < RUN:
            return count, b""
        end = pos + count * size
    masks = [int.from_bytes(data[pos + 2 + i : end : size], "big") for i in range(4)]
    out = bytearray(count * length)
    for j in range(length):
        column = int.from_bytes(data[pos + 6 + j : end : size], "big") ^ masks[j & 3]
        out[j::length] = column.to_bytes(count, "big")
    return count, bytes(out)


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1").strip() if value is not None else None


def _within(host: str, networks: tuple[str, ...]) -> bool:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(n) for n in networks)
