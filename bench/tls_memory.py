"""Where the memory of an idle connection goes: server-side pyOpenSSL state, in process.

    python bench/tls_memory.py [--count 2000]

Completes COUNT in-memory handshakes against a context built exactly as the gateway builds
it, keeps only the server-side SSL.Connection objects, and reports the heap in use per
connection (glibc mallinfo2: bytes in use, unaffected by fragmentation), for: a fresh
connection with no handshake, TLS 1.2 and TLS 1.3, with and without client certificates.
It separates OpenSSL's own per-connection cost from what the gateway adds (compare with
bench/idle_connections.py).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import tempfile

from harness import support  # noqa: F401  (sets sys.path)
from OpenSSL import SSL

from gateway.testing import prepare_text
from gateway.tls.context import build_context
from gateway.tls.verify import CertificateVerifier


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
        ).split()
    ]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2


def heap_kib() -> float:
    info = _libc.mallinfo2()
    return (info.uordblks + info.hblkhd) / 1024


def _pump(a: SSL.Connection, b: SSL.Connection) -> None:
    moved = True
    while moved:
        moved = False
        for src, dst in ((a, b), (b, a)):
            try:
                data = src.bio_read(65536)
            except SSL.WantReadError:
                continue
            dst.bio_write(data)
            moved = True


def _handshake(server_ctx: SSL.Context, client_ctx: SSL.Context) -> SSL.Connection:
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    for _ in range(10):
        for conn in (client, server):
            try:
                conn.do_handshake()
            except SSL.WantReadError:
                pass
        _pump(client, server)
    # One exchange each way, as CONNECT/CONNACK would, so idle buffers are released.
    client.send(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x00\x00\x00")
    _pump(client, server)
    server.recv(100)
    server.send(b"\x20\x02\x00\x00")
    _pump(server, client)
    client.recv(100)
    try:
        server.recv(100)
    except SSL.WantReadError:
        pass
    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    p = support.make_pki(tempfile.mkdtemp(prefix="mqttgw-bench-"))
    device = p.client("device")
    prepared = prepare_text(support.listener_conf("t", 8883, 1883, p))
    listener, material = prepared.config.listener("t"), prepared.materials["t"]
    version = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    print(f"server-side heap in use per connection ({version}, {args.count} connections)")
    for label, tls, client_cert in [
        ("TLS 1.3, client certificate (the gateway)", SSL.TLS1_3_VERSION, True),
        ("TLS 1.2, client certificate", SSL.TLS1_2_VERSION, True),
        ("TLS 1.3, no client certificate", SSL.TLS1_3_VERSION, False),
        ("TLS 1.2, no client certificate", SSL.TLS1_2_VERSION, False),
    ]:
        server_ctx = build_context(listener.name, listener.tls, material, CertificateVerifier())
        client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        client_ctx.set_max_proto_version(tls)
        if client_cert:
            client_ctx.use_certificate_chain_file(device[0].encode())
            client_ctx.use_privatekey_file(device[1].encode())
        else:
            server_ctx.set_verify(SSL.VERIFY_NONE)
        for _ in range(20):
            _handshake(server_ctx, client_ctx)
        gc.collect()
        before = heap_kib()
        kept = [_handshake(server_ctx, client_ctx) for _ in range(args.count)]
        gc.collect()
        print(f"  {label:45} {(heap_kib() - before) / len(kept):6.1f} KiB")
        del kept
        gc.collect()
    server_ctx = build_context(listener.name, listener.tls, material, CertificateVerifier())
    before = heap_kib()
    fresh = [SSL.Connection(server_ctx, None) for _ in range(args.count)]
    print(
        f"  {'fresh SSL.Connection, before any handshake':45} "
        f"{(heap_kib() - before) / len(fresh):6.1f} KiB"
    )
    # The floor: OpenSSL's own SSL object on a context with nothing set, no Python at all.
    from OpenSSL._util import lib

    bare = SSL.Context(SSL.TLS_METHOD)
    before = heap_kib()
    raw = [lib.SSL_new(bare._context) for _ in range(args.count)]  # type: ignore[attr-defined]
    label = "SSL_new on a default context (C only)"
    print(f"  {label:45} {(heap_kib() - before) / len(raw):6.1f} KiB")
    for r in raw:
        lib.SSL_free(r)
    _system_openssl(p, device, args.count)


def _system_openssl(p: object, device: tuple[str, str], count: int) -> None:
    """The same with the system's OpenSSL (Python's ssl module; HAProxy and mosquitto link
    it): an SSLObject with its two memory BIOs, and after a TLS 1.3 handshake with a client
    certificate (server side)."""
    import ssl

    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(p.server_cert, p.server_key)  # type: ignore[attr-defined]
    server.load_verify_locations(p.ca_file)  # type: ignore[attr-defined]
    server.verify_mode = ssl.CERT_REQUIRED
    client = support.client_context(p, device, "1.3")  # type: ignore[arg-type]

    def handshake() -> object:
        si, so, ci, co = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
        s = server.wrap_bio(si, so, server_side=True)
        c = client.wrap_bio(ci, co, server_hostname="localhost")
        for _ in range(10):
            for x in (c, s):
                try:
                    x.do_handshake()
                except ssl.SSLWantReadError:
                    pass
            si.write(co.read())
            ci.write(so.read())
        c.write(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x00\x00\x00")
        si.write(co.read())
        s.read(100)
        s.write(b"\x20\x02\x00\x00")
        ci.write(so.read())
        c.read(100)
        return s, si, so

    print(f"system OpenSSL for comparison ({ssl.OPENSSL_VERSION}, Python's ssl module)")
    gc.collect()
    before = heap_kib()
    fresh = [
        server.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True) for _ in range(count)
    ]
    print(f"  {'fresh SSLObject + 2 BIOs':45} {(heap_kib() - before) / count:6.1f} KiB")
    del fresh
    for _ in range(20):
        handshake()
    gc.collect()
    before = heap_kib()
    kept = [handshake() for _ in range(count)]
    gc.collect()
    print(f"  {'TLS 1.3, client certificate':45} {(heap_kib() - before) / len(kept):6.1f} KiB")


if __name__ == "__main__":
    main()
