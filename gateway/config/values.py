"""Value syntax of the configuration file (EMQX 4's): durations, sizes, booleans, lists,
addresses, URLs. Each parser takes the raw text and returns the value or raises ValueError
with the reason the operator reads; each formatter gives the text back."""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable
from typing import TypeVar

from gateway.mqtt.packets import encode_string


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?", text.strip())
    if not m:
        raise ValueError(f"expected a duration such as 500ms, 15s, 5m, 1h, got {text!r}")
    scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    value = float(m.group(1)) * scale
    if value <= 0:
        raise ValueError("must be greater than zero")
    return value


def format_duration(value: float) -> str:
    for unit, scale in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if value >= scale and value % scale == 0:
            return f"{int(value // scale)}{unit}"
    return f"{round(value * 1000)}ms"


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "on"):
        return True
    if lowered in ("false", "off"):
        return False
    raise ValueError(f"expected true, false, on or off, got {text!r}")


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*(b|kb|mb|gb)?", text.strip().lower())
    if not m:
        raise ValueError(f"expected a size such as 65536, 64KB or 1MB, got {text!r}")
    value = (
        int(m.group(1)) * {None: 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}[m.group(2)]
    )
    if value <= 0:
        raise ValueError("must be greater than zero")
    return value


def format_size(value: int) -> str:
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if value % scale == 0:
            return f"{value // scale}{unit}"
    return str(value)


def parse_limit(text: str) -> int:
    """A whole number of at least zero; 0 switches the limit off."""
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"expected a whole number (0: no limit), got {text!r}") from None
    if value < 0:
        raise ValueError("must be 0 (no limit) or more")
    return value


def parse_positive_int(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise ValueError("must be greater than zero")
    return value


MAX_WORKERS = 256


def parse_workers(text: str) -> int:
    """``auto`` (0: one per CPU the process may use) or a count from 1 to MAX_WORKERS."""
    if text.strip().lower() == "auto":
        return 0
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"expected auto or a number of processes, got {text!r}") from None
    if not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"must be auto or from 1 to {MAX_WORKERS}")
    return value


def parse_message_rate(text: str) -> float | None:
    """``100/s``, ``10000/60m`` (messages); empty or ``none``: no limit."""
    if text.strip().lower() in ("", "none", "infinity"):
        return None
    from gateway.mqtt.limits import parse_rate

    return parse_rate(text, sized=False)


def parse_byte_rate(text: str) -> float | None:
    """``1MB/s``, ``512kb/10s`` (bytes); empty or ``none``: no limit."""
    if text.strip().lower() in ("", "none", "infinity"):
        return None
    from gateway.mqtt.limits import parse_rate

    return parse_rate(text, sized=True)


def format_rate(value: float | None) -> str:
    return "none" if value is None else f"{value:g}/s"


def parse_drain_rate(text: str) -> float | None:
    """``auto`` (None: spread over the drain) or sessions per second (0: none early)."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"expected auto or sessions per second, got {text!r}") from None
    if not 0 <= value <= 1_000_000:
        raise ValueError("must be auto or from 0 to 1000000 sessions per second")
    return value


def parse_server_reference(text: str) -> str:
    """An MQTT 5 Server Reference: host[:port], or several separated by spaces (MQTT 5
    4.11); printable, at most 1024 characters."""
    value = " ".join(text.split())
    if not value or len(value) > 1024 or not value.isprintable():
        raise ValueError("expected host[:port] (or several, space-separated), printable, <= 1024")
    return value


def format_drain_rate(value: float | None) -> str:
    return "auto" if value is None else f"{value:g}"


def format_workers(value: int) -> str:
    return "auto" if value == 0 else str(value)


def parse_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def parse_port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"port must be 1-65535, got {text!r}")
    return int(text)


def parse_bind(text: str) -> tuple[str, int]:
    """``[ip:]port``; IPv6 addresses in brackets. No host names: a listener binds an address."""
    text = text.strip()
    if text.isdigit():
        return "0.0.0.0", parse_port(text)
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([0-9.]+):(\d+)", text)
    if not m:
        raise ValueError(f"expected [ip:]port such as 8883 or 127.0.0.1:8883, got {text!r}")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    return host, parse_port(port)


def format_bind(value: tuple[str, int]) -> str:
    host, port = value
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_host_port(text: str) -> tuple[str, int]:
    text = text.strip()
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([A-Za-z0-9.-]+):(\d+)", text)
    if not m:
        raise ValueError(f"expected host:port such as 127.0.0.1:1883, got {text!r}")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    return host, parse_port(port)


def parse_host_port_list(text: str) -> tuple[tuple[str, int], ...]:
    """One or more ``host:port``, comma-separated (a broker pool)."""
    items = parse_list(text)
    if not items:
        raise ValueError("expected host:port[, host:port ...]")
    out = tuple(parse_host_port(item) for item in items)
    if len(set(out)) != len(out):
        raise ValueError("a broker is listed twice")
    return out


def format_host_port_list(value: tuple[tuple[str, int], ...]) -> str:
    return ", ".join(format_bind(a) for a in value)


E = TypeVar("E", bound=enum.Enum)


def choice(vocabulary: type[E]) -> Callable[[str], E]:
    """A parser of one of ``vocabulary``'s words into its member."""
    words = [str(member.value) for member in vocabulary]

    def parse(text: str) -> E:
        return vocabulary(enum_of(*words)(text))

    return parse


def enum_of(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.strip() not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text.strip()

    return parse


TLS_VERSIONS = ("tlsv1.3", "tlsv1.2")


def parse_tls_versions(text: str) -> tuple[str, ...]:
    versions = parse_list(text.lower())
    if not versions:
        raise ValueError("at least one TLS version is required")
    for v in versions:
        if v not in TLS_VERSIONS:
            raise ValueError(f"{v!r} is not accepted; mqttgw speaks tlsv1.3 and tlsv1.2 only")
    return tuple(sorted(set(versions), key=TLS_VERSIONS.index))


def parse_duration_or_zero(text: str) -> float:
    if text.strip() in ("0", "0s", "0ms"):
        return 0.0
    return parse_duration(text)


def parse_urls(text: str) -> tuple[str, ...]:
    urls = parse_list(text)
    for url in urls:
        if not re.match(r"^https?://[^\s/]+", url, re.I):
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
    return urls


def parse_urls_one(text: str) -> str:
    urls = parse_urls(text)
    if len(urls) != 1:
        raise ValueError("expected one http:// or https:// URL")
    return urls[0]


def parse_path(text: str) -> str:
    if not text.strip():
        raise ValueError("a path is required")
    return text.strip()


def format_list(value: tuple[str, ...]) -> str:
    return ",".join(value)


def format_bool(value: bool) -> str:
    return "true" if value else "false"


def format_optional(value: str | None) -> str:
    return "" if value is None else value


def format_optional_bind(value: tuple[str, int] | None) -> str:
    return "" if value is None else format_bind(value)


def parse_admin_bind(text: str) -> tuple[str, int]:
    """Like parse_bind, but a bare port binds loopback: the admin listener is local unless
    the operator names another address."""
    if text.strip().isdigit():
        return "127.0.0.1", parse_port(text.strip())
    return parse_bind(text)


def parse_mqtt_client_id(text: str) -> str:
    """A client id the gateway sends in a CONNECT of its own: one MQTT string field (at most
    65,535 bytes of UTF-8, no U+0000), not empty (a broker may refuse an empty one)."""
    value = text.strip()
    if not value:
        raise ValueError("a client id is required")
    try:
        encode_string(value, "client id")
    except ValueError as e:
        raise ValueError(f"{e} (at most 65535 bytes of UTF-8)") from None
    return value


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name (RFC 9110 token)


def parse_token(text: str) -> str:
    """An HTTP header name, lowercased."""
    value = text.strip().lower()
    if not _TOKEN.match(value):
        raise ValueError(f"not an HTTP header name: {text!r}")
    return value


def parse_http_path(text: str) -> str:
    value = text.strip()
    if not value.startswith("/") or any(c.isspace() or ord(c) < 0x21 for c in value):
        raise ValueError(f"expected a path such as /mqtt, got {text!r}")
    return value


def parse_protocol_names(text: str) -> tuple[str, ...]:
    """ALPN protocol names (printable ASCII, 1-255 bytes each), no repeats."""
    names = parse_list(text)
    for name in names:
        if not 0 < len(name) < 256 or not name.isascii() or not name.isprintable():
            raise ValueError(f"not an ALPN protocol name: {name!r}")
    if len(set(names)) != len(names):
        raise ValueError("a protocol is listed twice")
    return names


def parse_networks(text: str) -> tuple[str, ...]:
    """Addresses or networks in CIDR notation (kept as text, normalised)."""
    out = []
    for item in parse_list(text):
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"not an address or network: {item!r}") from None
    return tuple(out)
