"""MQTT over WebSocket, the device's side: the upgrade and its refusals, frames split anywhere
and packets split across frames, pings, closes both ways, bounds; played against wsproto's
own client, sans-IO; and the configuration of wss listeners and ALPN."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)

from gateway import testing as support
from gateway.choices import Transport
from gateway.config import parse_config
from gateway.config.model import WebSocketSettings
from gateway.errors import ConfigError
from gateway.proxy import websocket as W
from gateway.proxy.device_link import Mode, mode_for

SETTINGS = WebSocketSettings()
CONNECT = support.connect_packet("ws-device")


def client(
    target: str = "/mqtt", subprotocols: tuple[str, ...] = ("mqtt",), headers: tuple = ()
) -> tuple[WSConnection, bytes]:
    ws = WSConnection(ConnectionType.CLIENT)
    request = Request(
        host="gw.test", target=target, subprotocols=list(subprotocols), extra_headers=list(headers)
    )
    return ws, ws.send(request)


def events(ws: WSConnection, data: bytes) -> list:
    ws.receive_data(data)
    return list(ws.events())


def upgraded(
    settings: WebSocketSettings = SETTINGS, **kw: object
) -> tuple[W.WebSocketEdge, WSConnection]:
    edge = W.WebSocketEdge(settings, "127.0.0.1")
    ws, request = client(**kw)  # type: ignore[arg-type]
    got = edge.receive(request)
    assert got.upgraded is not None and got.refused is None
    (accepted,) = events(ws, got.out)
    assert isinstance(accepted, AcceptConnection)
    return edge, ws


def test_an_upgrade_with_a_subprotocol_is_accepted_and_carries_mqtt_both_ways() -> None:
    """The first supported subprotocol the client offers is chosen; binary messages carry
    the MQTT bytes in; the gateway's bytes go out as binary messages."""
    edge = W.WebSocketEdge(SETTINGS, "127.0.0.1")
    ws, request = client(subprotocols=("mqttv3.1", "mqtt"))
    got = edge.receive(request)
    assert got.upgraded == W.Upgrade("mqtt", None, None)
    (accepted,) = events(ws, got.out)
    assert isinstance(accepted, AcceptConnection) and accepted.subprotocol == "mqtt"
    got = edge.receive(ws.send(Message(data=CONNECT)))
    assert got.mqtt == CONNECT and got.out == b""
    (message,) = events(ws, edge.frame(b"\x20\x02\x00\x00"))
    assert isinstance(message, BytesMessage) and message.data == b"\x20\x02\x00\x00"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=6), st.data())
def test_frames_split_anywhere_give_the_same_mqtt_bytes(
    messages: list[bytes], data: st.DataObject
) -> None:
    """Whatever the messages (an MQTT packet may span several, one may hold several
    packets) and however the bytes are cut, the MQTT stream is their payloads in order."""
    edge, ws = upgraded()
    wire = b"".join(ws.send(Message(data=m)) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    mqtt = b""
    for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        got = edge.receive(wire[a:b])
        assert got.refused is None
        mqtt += got.mqtt
    assert mqtt == b"".join(messages)


@pytest.mark.parametrize(
    ("kw", "status", "why"),
    [
        ({"target": "/other"}, 404, "path '/other' is not /mqtt"),
        ({"subprotocols": ("chat",)}, 400, "no supported subprotocol (offered: chat)"),
        ({"subprotocols": ()}, 400, "no supported subprotocol (offered: none)"),
    ],
)
def test_a_wrong_upgrade_gets_an_http_error(kw: dict, status: int, why: str) -> None:
    """Another path, no subprotocol the listener supports: a short HTTP error that says why."""
    edge = W.WebSocketEdge(SETTINGS, "127.0.0.1")
    ws, request = client(**kw)
    got = edge.receive(request)
    assert got.refused == W.Refusal(why, status=status)
    (rejected, *_) = events(ws, got.out)
    assert isinstance(rejected, RejectConnection) and rejected.status_code == status
    assert edge.receive(b"more").mqtt == b""  # nothing after a refusal


def test_a_request_that_is_not_an_upgrade_gets_400() -> None:
    """A plain GET (a browser, a health check) is told 400, never left hanging."""
    edge = W.WebSocketEdge(SETTINGS, "127.0.0.1")
    got = edge.receive(b"GET /mqtt HTTP/1.1\r\nHost: gw.test\r\n\r\n")
    assert got.refused is not None and got.refused.status == 400
    assert got.out.startswith(b"HTTP/1.1 400 ")


def test_an_upgrade_request_over_16_kib_is_refused() -> None:
    """A request head that never ends (slow-loris stuffing) is refused past h11's bound."""
    edge = W.WebSocketEdge(SETTINGS, "127.0.0.1")
    got = edge.receive(b"GET /mqtt HTTP/1.1\r\nX-Pad: " + b"a" * 20000)
    assert got.refused is not None and got.refused.status == 400


def test_origins_are_checked_when_asked() -> None:
    """With check_origin_enable, a browser's Origin must be allowed (403 otherwise); a
    request without Origin is not a browser's and passes."""
    checked = WebSocketSettings(check_origin=True, allowed_origins=("https://ok.test",))
    edge = W.WebSocketEdge(checked, "127.0.0.1")
    _, request = client(headers=((b"origin", b"https://evil.test"),))
    assert edge.receive(request).refused == W.Refusal(
        "origin 'https://evil.test' is not allowed", status=403
    )
    edge, _ = upgraded(checked, headers=((b"origin", b"https://ok.test"),))
    upgraded(checked)


def test_the_forwarded_address_is_believed_only_from_a_trusted_proxy() -> None:
    """X-Forwarded-For/-Port name the device only when the peer is a trusted proxy (the
    last address of the list: the one the proxy saw)."""
    headers = ((b"x-forwarded-for", b"203.0.113.9, 198.51.100.7"), (b"x-forwarded-port", b"4242"))
    trusted = WebSocketSettings(trusted_proxies=("127.0.0.0/8",))
    for settings_, peer, expected in [
        (trusted, "127.0.0.1", ("198.51.100.7", 4242)),
        (trusted, "192.0.2.1", None),
        (SETTINGS, "127.0.0.1", None),
    ]:
        edge = W.WebSocketEdge(settings_, peer)
        _, request = client(headers=headers)
        got = edge.receive(request)
        assert got.upgraded is not None and got.upgraded.forwarded == expected


def test_text_messages_and_oversized_messages_are_refused_with_their_close_codes() -> None:
    """A text message: 1003; a message over max_frame_size: 1009, once that many bytes have
    come (a 100 MiB frame header alone is nothing held)."""
    edge, ws = upgraded()
    got = edge.receive(ws.send(TextMessage(data="hello")))
    assert got.refused == W.Refusal("a text message (MQTT is binary)", code=W.UNSUPPORTED_DATA)
    (close,) = events(ws, got.out)
    assert isinstance(close, CloseConnection) and close.code == W.UNSUPPORTED_DATA

    small = WebSocketSettings(max_message_size=1000)
    edge, ws = upgraded(small)
    header = bytes([0x82, 0xFF]) + (100 * 1024 * 1024).to_bytes(8, "big") + b"mask"
    assert edge.receive(header).refused is None  # announced only
    got = edge.receive(b"x" * 2000)
    assert got.refused is not None and got.refused.code == W.MESSAGE_TOO_BIG
    assert len(got.mqtt) <= 1000


def test_pings_are_answered_and_a_close_is_answered_and_reported() -> None:
    """A ping gets its pong (several in one read: one pong, for the last: a flood of pings
    gets back no more than it sent); a close is answered, and reported."""
    edge, ws = upgraded()
    (pong,) = events(ws, edge.receive(ws.send(Ping(payload=b"hi"))).out)
    assert isinstance(pong, Pong) and pong.payload == b"hi"
    flood = b"".join(ws.send(Ping(payload=bytes([i]))) for i in range(100))
    (pong,) = events(ws, edge.receive(flood).out)
    assert isinstance(pong, Pong) and pong.payload == bytes([99])
    got = edge.receive(ws.send(CloseConnection(code=1000)))
    assert got.closed
    (answer,) = events(ws, got.out)
    assert isinstance(answer, CloseConnection)


def test_the_gateways_close_frame_once() -> None:
    """``close`` gives one close frame with the code that says why, then nothing."""
    edge, ws = upgraded()
    (close,) = events(ws, edge.close(W.POLICY_VIOLATION))
    assert isinstance(close, CloseConnection) and close.code == W.POLICY_VIOLATION
    assert edge.close(W.NORMAL) == b""
    assert W.WebSocketEdge(SETTINGS, "127.0.0.1").close() == b""  # before any upgrade


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.data())
def test_any_bytes_give_mqtt_bytes_or_a_refusal(raw: bytes, data: st.DataObject) -> None:
    """Whatever a device sends, before or after its upgrade: MQTT bytes, or one refusal;
    never an exception, never more than the message bound."""
    edge = W.WebSocketEdge(WebSocketSettings(max_message_size=256), "127.0.0.1")
    if data.draw(st.booleans()):
        _, request = client()
        edge.receive(request)
    cut = data.draw(st.integers(0, len(raw)))
    for chunk in (raw[:cut], raw[cut:]):
        got = edge.receive(chunk)
        assert len(got.mqtt) <= 256 + 600
        if got.refused is not None:
            break


def test_alpn_and_the_listener_decide_the_mode() -> None:
    """A wss listener: WebSocket always; an ssl listener offering http/1.1: WebSocket when
    negotiated, MQTT for mqtt / x-amzn-mqtt-ca, the first byte when no name was settled."""
    assert mode_for(None, False, b"http/1.1") is None
    assert mode_for(SETTINGS, True, b"") is Mode.WEBSOCKET
    assert mode_for(SETTINGS, False, b"http/1.1") is Mode.WEBSOCKET
    assert mode_for(SETTINGS, False, b"x-amzn-mqtt-ca") is None
    assert mode_for(SETTINGS, False, b"") is Mode.SNIFF


def _conf(extra: str, family: str = "wss") -> str:
    """A listener's configuration (parsed only: its files are not read)."""
    return (
        f"listener.{family}.w = 127.0.0.1:18084\n"
        f"listener.{family}.w.certfile = server.pem\n"
        f"listener.{family}.w.keyfile = server.key\n"
        f"listener.{family}.w.verify = verify_none\n"
        f"listener.{family}.w.upstream = 127.0.0.1:1883\n" + extra
    )


def test_wss_listeners_and_their_keys_parse() -> None:
    """``listener.wss.<name>`` takes the ssl keys and EMQX's WebSocket keys; an ssl listener
    takes alpn; the effective configuration names each listener by its family."""
    config = parse_config(
        _conf(
            "listener.wss.w.mqtt_path = /ws\n"
            "listener.wss.w.supported_subprotocols = mqtt\n"
            "listener.wss.w.check_origin_enable = true\n"
            "listener.wss.w.allowed_origins = https://a.test\n"
            "listener.wss.w.trusted_proxies = 10.0.0.0/8\n"
            "listener.wss.w.max_frame_size = 64KB\n"
        )
    )
    (w,) = config.listeners
    assert w.transport is Transport.WSS and w.websocket_enabled
    assert w.websocket.path == "/ws" and w.websocket.subprotocols == ("mqtt",)
    assert w.websocket.trusted_proxies == ("10.0.0.0/8",) and w.websocket.max_message_size == 65536
    assert w.key_prefix == "listener.wss.w"
    ssl = parse_config(_conf("listener.ssl.w.alpn = mqtt, x-amzn-mqtt-ca, http/1.1\n", "ssl"))
    assert ssl.listeners[0].tls.alpn == ("mqtt", "x-amzn-mqtt-ca", "http/1.1")
    assert ssl.listeners[0].websocket_enabled


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("listener.ssl.w.mqtt_path = /x\n", "listener 'w' is declared as listener.wss.w"),
        ("listener.wss.w.mqtt_path = ws\n", "expected a path such as /mqtt"),
        ("listener.wss.w.alpn = mqtt\n", "a wss listener speaks http/1.1"),
        ("listener.wss.w.check_origin_enable = true\n", "needs allowed_origins"),
        ("listener.wss.w.trusted_proxies = everyone\n", "not an address or network"),
        ("listener.ssl.w = 127.0.0.1:18085\n", "listener 'w' is declared at line 1"),
    ],
)
def test_bad_websocket_configuration_names_its_line(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(_conf(extra))


@st.composite
def device_streams(draw: st.DrawFn) -> bytes:
    """What a device may send after its upgrade: short and long binary messages, fragmented
    ones, pings, text, a close, and garbage, in any order."""
    ws, request = client()
    edge = W.WebSocketEdge(SETTINGS, "127.0.0.1", short_path=False)
    ws.receive_data(edge.receive(request).out)
    list(ws.events())
    wire = b""
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(
            st.sampled_from(["short", "run", "long", "fragmented", "ping", "text", "close", "junk"])
        )
        if kind == "short":
            wire += ws.send(Message(data=draw(st.binary(max_size=125))))
        elif kind == "run":  # frames of one size, as a device writing fixed-size messages
            size = draw(st.integers(0, 125))
            for _ in range(draw(st.integers(1, 3 * W.RUN))):
                wire += ws.send(Message(data=draw(st.binary(min_size=size, max_size=size))))
        elif kind == "long":
            wire += ws.send(Message(data=draw(st.binary(min_size=126, max_size=400))))
        elif kind == "fragmented":
            data = draw(st.binary(min_size=2, max_size=60))
            wire += ws.send(Message(data=data[:1], message_finished=False))
            wire += ws.send(Message(data=data[1:], message_finished=True))
        elif kind == "ping":
            wire += ws.send(Ping(payload=draw(st.binary(max_size=20))))
        elif kind == "text":
            wire += ws.send(TextMessage(data="x"))
        elif kind == "close":
            wire += ws.send(CloseConnection(code=1000))
            break
        else:
            wire += draw(st.binary(max_size=30))
            break
    return wire


@settings(max_examples=400, deadline=None)
@given(device_streams(), st.data())
def test_the_short_path_answers_as_wsproto_does(wire: bytes, data: st.DataObject) -> None:
    """Whatever the device sends after its upgrade, cut anywhere: the edge with its short
    path gives the same MQTT bytes, the same answers and the same refusal as wsproto alone
    (the short path reads only whole short binary frames and leaves the rest to it)."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    results = []
    for short in (True, False):
        edge = W.WebSocketEdge(SETTINGS, "127.0.0.1", short_path=short)
        _, request = client()
        assert edge.receive(request).upgraded is not None
        mqtt, out, refused, closed = b"", b"", None, False
        for chunk in chunks:
            got = edge.receive(chunk)
            mqtt, out = mqtt + got.mqtt, out + got.out
            refused = refused or got.refused
            closed = closed or got.closed
        results.append((mqtt, out, refused, closed))
    assert results[0] == results[1]


@given(st.binary(max_size=70000))
def test_the_gateways_frames_read_back_as_one_message(payload: bytes) -> None:
    """``frame``: one final binary message of any length, as wsproto's client reads it."""
    edge, ws = upgraded()
    ws.receive_data(edge.frame(payload))
    (message,) = list(ws.events())
    assert isinstance(message, BytesMessage) and message.message_finished
    assert bytes(message.data) == payload


def test_check_config_prints_a_wss_listener_that_parses_back_the_same() -> None:
    """``mqttgw check-config``'s effective text names the listener by its family and holds
    every WebSocket key; read back, it is the same configuration."""
    from gateway.config import format_config

    config = parse_config(
        _conf("listener.wss.w.trusted_proxies = 10.0.0.0/8\nlistener.wss.w.alpn = http/1.1\n")
    )
    text = format_config(config)
    assert "listener.wss.w = 127.0.0.1:18084" in text
    assert "listener.wss.w.trusted_proxies = 10.0.0.0/8" in text
    again = parse_config(text)
    assert again.listeners == config.listeners


def test_ws_listeners_have_no_tls_keys() -> None:
    """``listener.ws.<name>`` (a load balancer in front ends TLS) needs no certificate;
    global TLS settings do not apply to it; check-config's text leaves its TLS keys out
    and reads back the same."""
    from gateway.config import format_config

    config = parse_config(
        "tls_profile = modern\n"
        "listener.ws.lb = 127.0.0.1:18080\n"
        "listener.ws.lb.upstream = 127.0.0.1:1883\n"
        "listener.ws.lb.proxy_protocol = true\n"
    )
    (lb,) = config.listeners
    assert lb.transport is Transport.WS and not lb.transport.tls
    assert lb.websocket_enabled and lb.key_prefix == "listener.ws.lb"
    assert lb.tls.certfile is None and not lb.tls.verify_peer and lb.crl is None
    text = format_config(config)
    assert "listener.ws.lb.proxy_protocol = true" in text
    assert "listener.ws.lb.certfile" not in text and "listener.ws.lb.verify" not in text
    assert parse_config(text).listeners == config.listeners


@pytest.mark.parametrize(
    "extra",
    [
        "listener.ws.lb.certfile = server.pem\n",
        "listener.ws.lb.verify = verify_peer\n",
        "listener.ws.lb.enable_crl_cache = true\n",
        "listener.ws.lb.peer_cert_as_username = cn\n",
        "listener.ws.lb.alpn = http/1.1\n",
    ],
)
def test_a_tls_key_on_a_ws_listener_names_its_line(extra: str) -> None:
    text = "listener.ws.lb = 127.0.0.1:18080\nlistener.ws.lb.upstream = 127.0.0.1:1883\n"
    with pytest.raises(ConfigError, match=r":3: listener\.ws\.lb\..*a ws listener has no TLS"):
        parse_config(text + extra)


@given(st.binary(min_size=1, max_size=125), st.binary(min_size=4, max_size=4))
def test_one_short_frame_is_unmasked_as_wsproto_does(payload: bytes, mask: bytes) -> None:
    """``unmask_one``: a whole short masked binary frame gives its payload; anything with a
    byte more or less is not one frame."""
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    frame = bytes((0x82, 0x80 | len(payload))) + mask + masked
    assert W.unmask_one(frame) == payload
    assert W.unmask_one(frame[:-1]) is None and W.unmask_one(frame + b"\x00") is None
