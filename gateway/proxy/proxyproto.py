"""The PROXY protocol, versions 1 and 2 (HAProxy's specification,
https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt). Sans-IO.

Outbound (``upstream_proxy_protocol``): ``header_v1`` / ``header_v2`` build the header the
gateway writes to the broker before the CONNECT, carrying the device's address; v2 also
carries the TLS facts of the device's connection (PP2_TYPE_SSL: version, cipher, the
verification result, the client certificate's CN).

Inbound (``proxy_protocol = true``): ``HeaderReader`` takes the bytes a load balancer sends
first and yields the original addresses, or refuses (ProxyHeaderError) what is not a valid
header, bounded in size.
"""

from __future__ import annotations

import ipaddress
import struct

import attrs

from gateway.errors import GatewayError

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # the longest v1 line, CRLF included (the specification's figure)
V2_MAX_BODY = 2048  # addresses and TLVs a load balancer sends fit easily; more is refused

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04


class ProxyHeaderError(GatewayError):
    def __init__(self, detail: str) -> None:
        super().__init__("proxy_protocol", detail)


@attrs.frozen
class TlsFacts:
    """What v2's PP2_TYPE_SSL says of the device's TLS connection."""

    version: str  # "TLSv1.3"
    cipher: str  # "TLS_AES_128_GCM_SHA256"
    cert_in_connection: bool
    verified: bool
    cn: str | None = None
    resumed: bool = False


@attrs.frozen
class ProxiedAddress:
    """What a PROXY header says: the original source and destination, or ``local`` (a
    health check of the load balancer itself: the connection's own addresses stand)."""

    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    local: bool = False
    tlvs: tuple[tuple[int, bytes], ...] = ()


def _family(host: str) -> int:
    return ipaddress.ip_address(host).version


def header_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """``PROXY TCP4 src dst sport dport\\r\\n`` (TCP6 for IPv6; mixed families: UNKNOWN)."""
    (shost, sport), (dhost, dport) = source, destination
    try:
        families = {_family(shost), _family(dhost)}
    except ValueError:
        return b"PROXY UNKNOWN\r\n"
    if len(families) != 1:
        return b"PROXY UNKNOWN\r\n"
    proto = "TCP4" if families == {4} else "TCP6"
    return f"PROXY {proto} {shost} {dhost} {sport} {dport}\r\n".encode("ascii")


def _tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def ssl_tlv(tls: TlsFacts) -> bytes:
    """PP2_TYPE_SSL: client flags, verify (0: the certificate verified), sub-TLVs."""
    client = PP2_CLIENT_SSL
    if tls.cert_in_connection:
        client |= PP2_CLIENT_CERT_CONN
        if tls.resumed:
            client |= PP2_CLIENT_CERT_SESS
    verify = 0 if tls.verified else 1
    body = struct.pack("!BI", client, verify)
    body += _tlv(PP2_SUBTYPE_SSL_VERSION, tls.version.encode("ascii", "replace"))
    body += _tlv(PP2_SUBTYPE_SSL_CIPHER, tls.cipher.encode("ascii", "replace"))
    if tls.cn is not None:
        body += _tlv(PP2_SUBTYPE_SSL_CN, tls.cn.encode("utf-8")[:1024])
    return _tlv(PP2_TYPE_SSL, body)


def header_v2(
    source: tuple[str, int], destination: tuple[str, int], tls: TlsFacts | None = None
) -> bytes:
    """The binary v2 header, command PROXY over TCP, with the SSL TLV when ``tls``."""
    (shost, sport), (dhost, dport) = source, destination
    s: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    d: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    try:
        s, d = ipaddress.ip_address(shost), ipaddress.ip_address(dhost)
    except ValueError:
        s = d = None
    tlvs = ssl_tlv(tls) if tls is not None else b""
    if s is not None and d is not None and s.version == d.version:
        family = 0x11 if s.version == 4 else 0x21  # AF_INET / AF_INET6, STREAM
        addresses = s.packed + d.packed + struct.pack("!HH", sport, dport)
    else:
        family, addresses = 0x00, b""  # AF_UNSPEC: the receiver keeps its own addresses
    body = addresses + tlvs
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


# -- inbound -------------------------------------------------------------------------------


class HeaderReader:
    """Feed the first bytes of a connection; ``result`` once a whole header is in, the bytes
    after it in ``rest``. Raises ProxyHeaderError as soon as the bytes cannot be a header."""

    def __init__(self) -> None:
        self.buffer = b""
        self.result: ProxiedAddress | None = None
        self.rest = b""

    def feed(self, data: bytes) -> ProxiedAddress | None:
        if self.result is not None:
            raise RuntimeError("the header has been read")
        self.buffer += data
        buf = self.buffer
        if buf[:1] == b"P" or (len(buf) < 6 and b"PROXY "[: len(buf)] == buf):
            return self._v1()
        prefix = V2_SIGNATURE[: len(buf)]
        if buf[: len(V2_SIGNATURE)] != prefix[: min(len(buf), len(V2_SIGNATURE))]:
            raise ProxyHeaderError("not a PROXY protocol header")
        if len(buf) < 16:
            return None
        return self._v2()

    def _done(self, result: ProxiedAddress, end: int) -> ProxiedAddress:
        self.result, self.rest = result, self.buffer[end:]
        self.buffer = b""
        return result

    def _v1(self) -> ProxiedAddress | None:
        buf = self.buffer
        end = buf.find(b"\r\n")
        if end < 0:
            if len(buf) >= V1_MAX:
                raise ProxyHeaderError("PROXY v1 line longer than 107 bytes")
            if not buf.startswith(b"PROXY "[: len(buf)]):
                raise ProxyHeaderError("not a PROXY protocol header")
            return None
        try:
            line = buf[:end].decode("ascii")
        except UnicodeDecodeError:
            raise ProxyHeaderError("PROXY v1 line is not ASCII") from None
        parts = line.split(" ")
        if parts[0] != "PROXY" or len(parts) < 2:
            raise ProxyHeaderError("not a PROXY protocol header")
        if parts[1] == "UNKNOWN":
            return self._done(ProxiedAddress(None, None, local=True), end + 2)
        if parts[1] not in ("TCP4", "TCP6") or len(parts) != 6:
            raise ProxyHeaderError(f"PROXY v1: unexpected {line[:60]!r}")
        _, proto, src, dst, sport, dport = parts
        try:
            s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
            ports = int(sport), int(dport)
        except ValueError:
            raise ProxyHeaderError(f"PROXY v1: bad address or port in {line[:60]!r}") from None
        want = 4 if proto == "TCP4" else 6
        if s.version != want or d.version != want or not all(0 <= p < 65536 for p in ports):
            raise ProxyHeaderError(f"PROXY v1: {proto} with {line[:60]!r}")
        return self._done(ProxiedAddress((str(s), ports[0]), (str(d), ports[1])), end + 2)

    def _v2(self) -> ProxiedAddress | None:
        buf = self.buffer
        version_command, family = buf[12], buf[13]
        (length,) = struct.unpack("!H", buf[14:16])
        if version_command >> 4 != 2:
            raise ProxyHeaderError(f"PROXY v2: version {version_command >> 4}")
        command = version_command & 0x0F
        if command not in (0, 1):
            raise ProxyHeaderError(f"PROXY v2: command {command}")
        if length > V2_MAX_BODY:
            raise ProxyHeaderError(f"PROXY v2: {length} bytes of addresses and TLVs")
        if len(buf) < 16 + length:
            return None
        body = buf[16 : 16 + length]
        if command == 0:  # LOCAL: the balancer's own connection
            return self._done(ProxiedAddress(None, None, local=True), 16 + length)
        if family == 0x11:
            need = 12
            if length < need:
                raise ProxyHeaderError("PROXY v2: short IPv4 addresses")
            src = str(ipaddress.IPv4Address(body[0:4]))
            dst = str(ipaddress.IPv4Address(body[4:8]))
            sport, dport = struct.unpack("!HH", body[8:12])
        elif family == 0x21:
            need = 36
            if length < need:
                raise ProxyHeaderError("PROXY v2: short IPv6 addresses")
            src = str(ipaddress.IPv6Address(body[0:16]))
            dst = str(ipaddress.IPv6Address(body[16:32]))
            sport, dport = struct.unpack("!HH", body[32:36])
        elif family == 0x00:
            return self._done(ProxiedAddress(None, None, local=True), 16 + length)
        else:
            raise ProxyHeaderError(f"PROXY v2: address family 0x{family:02x} is not TCP")
        tlvs = parse_tlvs(body[need:])
        return self._done(ProxiedAddress((src, sport), (dst, dport), tlvs=tlvs), 16 + length)


def parse_tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    out, pos = [], 0
    while pos < len(data):
        if pos + 3 > len(data):
            raise ProxyHeaderError("PROXY v2: truncated TLV")
        kind, size = struct.unpack("!BH", data[pos : pos + 3])
        if pos + 3 + size > len(data):
            raise ProxyHeaderError("PROXY v2: truncated TLV")
        out.append((kind, data[pos + 3 : pos + 3 + size]))
        pos += 3 + size
    return tuple(out)
