"""Property-based tests of the CONNECT reader (hypothesis).

- Any byte string, fed whole, byte by byte or split at random points, ends in exactly one
  of: a Connect, NEED_DATA, or the codec's own RemoteProtocolError. Nothing else escapes.
- Every valid CONNECT built by the strategy below (MQTT 3.1, 3.1.1 and 5.0, with or without
  will, user name, password and MQTT 5 properties) parses back to the same fields, whole or
  split, and the bytes after it are kept for the relay.
"""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import mqtt
from gateway.testing import encode_length

MAX = 65536
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run(chunks: list[bytes], max_size: int = MAX) -> tuple[str, Any]:
    """Feed chunks as a connection would: ('connect', Connect), ('need', None) or
    ('error', RemoteProtocolError). Any other exception fails the test."""
    reader = mqtt.ConnectReader(max_size)
    for chunk in chunks:
        reader.receive_data(chunk)
        try:
            event = reader.next_event()
        except mqtt.RemoteProtocolError as e:
            assert e.kind in ("malformed", "too_large", "bad_protocol", "not_connect"), e.kind
            assert e.detail and "Traceback" not in e.detail
            return "error", e
        if event is not mqtt.NEED_DATA:
            assert isinstance(event, mqtt.Connect)
            return "connect", (event, reader.trailing_data)
    return "need", None


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, start = [], 0
    for p in points + [len(data)]:
        out.append(data[start:p])
        start = p
    return out


@SETTINGS
@given(st.binary(max_size=600), st.lists(st.integers(min_value=0), max_size=8))
def test_any_bytes_whole_split_or_one_by_one(data: bytes, cuts: list[int]) -> None:
    whole = run([data])
    assert run([data[i : i + 1] for i in range(len(data))])[0] == whole[0]
    assert run(split(data, cuts))[0] == whole[0]


@SETTINGS
@given(st.binary(max_size=300))
def test_bytes_after_a_connect_header_never_crash(body: bytes) -> None:
    """Fuzz behind a plausible fixed header, so the body parser itself is exercised."""
    packet = bytes([0x10]) + encode_length(len(body)) + body
    run([packet])
    run([packet[i : i + 1] for i in range(len(packet))])


# -- a strategy of valid CONNECT packets -------------------------------------------------

text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=40,
)


def _utf8(s: str) -> bytes:
    raw = s.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


def _binary(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


@attrs.frozen
class Spec:
    level: int
    client_id: str
    clean_start: bool
    keep_alive: int
    will: tuple[str, bytes, int, bool, bytes] | None  # topic, payload, qos, retain, props
    username: str | None
    password: bytes | None
    properties: bytes

    def encode(self) -> bytes:
        name = b"MQIsdp" if self.level == mqtt.MQTT_3_1 else b"MQTT"
        flags = 0x02 if self.clean_start else 0
        if self.will is not None:
            flags |= 0x04 | (self.will[2] << 3) | (0x20 if self.will[3] else 0)
        if self.username is not None:
            flags |= 0x80
        if self.password is not None:
            flags |= 0x40
        body = _binary(name) + bytes([self.level, flags]) + self.keep_alive.to_bytes(2, "big")
        if self.level == mqtt.MQTT_5:
            body += encode_length(len(self.properties)) + self.properties
        body += _utf8(self.client_id)
        if self.will is not None:
            topic, payload, _, _, props = self.will
            if self.level == mqtt.MQTT_5:
                body += encode_length(len(props)) + props
            body += _utf8(topic) + _binary(payload)
        if self.username is not None:
            body += _utf8(self.username)
        if self.password is not None:
            body += _binary(self.password)
        return bytes([0x10]) + encode_length(len(body)) + body


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    level = draw(st.sampled_from([mqtt.MQTT_3_1, mqtt.MQTT_3_1_1, mqtt.MQTT_5]))
    will = draw(
        st.none()
        | st.tuples(
            text, st.binary(max_size=64), st.integers(0, 2), st.booleans(), st.binary(max_size=20)
        )
    )
    username = draw(st.none() | text)
    # Before MQTT 5 a password needs a user name.
    password = draw(st.none() | st.binary(max_size=32))
    if level != mqtt.MQTT_5 and username is None:
        password = None
    return Spec(
        level,
        draw(text),
        draw(st.booleans()),
        draw(st.integers(0, 65535)),
        will,
        username,
        password,
        draw(st.binary(max_size=40)) if level == mqtt.MQTT_5 else b"",
    )


@SETTINGS
@given(specs(), st.binary(max_size=50), st.lists(st.integers(min_value=0), max_size=6))
def test_valid_connects_parse_back(spec: Spec, after: bytes, cuts: list[int]) -> None:
    packet = spec.encode()
    for whole, chunks in ((True, [packet + after]), (False, split(packet + after, cuts))):
        outcome, value = run(chunks)
        assert outcome == "connect", value
        connect, trailing = value
        assert connect.protocol_level == spec.level
        assert connect.client_id == spec.client_id
        assert connect.clean_start == spec.clean_start
        assert connect.keep_alive == spec.keep_alive
        assert connect.has_will == (spec.will is not None)
        assert connect.has_username == (spec.username is not None)
        assert connect.has_password == (spec.password is not None)
        assert connect.packet == packet  # forwarded byte for byte
        # What arrived with the CONNECT's last chunk is kept for the relay.
        assert trailing == after if whole else after.startswith(trailing)


@SETTINGS
@given(specs())
def test_a_connect_over_the_size_limit_is_refused(spec: Spec) -> None:
    packet = spec.encode()
    outcome, value = run([packet], max_size=len(packet) - 1)
    assert outcome == "error" and value.kind == "too_large"


# -- the configuration parser: hostile files get a ConfigError, nothing else -------------

config_lines = st.lists(
    st.one_of(
        text,
        st.builds(
            lambda k, v: f"{k} = {v}",
            st.sampled_from(
                ["upstream", "listener.ssl.x", "listener.ssl.x.verify", "max_conn_rate"]
                + ["listener.ssl.x.ciphers", "listener.ssl.x.upstream", "stats_log_interval"]
                + ["listener.ssl.x.max_connections", "crl_cache.refresh_interval"]
            ),
            text,
        ),
    ),
    max_size=12,
)


@SETTINGS
@given(config_lines, st.binary(max_size=200))
def test_any_configuration_text_is_a_config_or_a_config_error(lines: list[str], raw: bytes) -> None:
    from gateway.config import parse_config
    from gateway.config.load import decode_text
    from gateway.errors import ConfigError

    for candidate in ("\n".join(lines), raw):
        try:
            content = (
                decode_text("f.conf", candidate) if isinstance(candidate, bytes) else candidate
            )
            parse_config(content, "f.conf")
        except ConfigError as e:
            assert str(e).startswith("f.conf") and "\n" not in str(e)
