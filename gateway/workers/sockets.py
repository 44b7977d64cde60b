"""The listening sockets of a listener served by several workers: one ``SO_REUSEPORT``
socket per worker on the same address, bound by the master (before it drops privileges)
and held by it for as long as it lives, so a port never closes while a worker restarts.

With ``address`` affinity a classic BPF program on the group picks the socket from the
client's address (the IPv4 address, or the last 32 bits of the IPv6 one) modulo the number
of sockets, so a reconnecting device meets the worker that holds its TLS session. Without
it, the kernel hashes address and port.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct

SO_ATTACH_REUSEPORT_CBPF = 51  # linux/asm-generic/socket.h
_SKF_NET_OFF = -0x100000  # loads relative to the network header
_LD_W_ABS, _ALU_MOD_K, _RET_A = 0x20, 0x94, 0x16
_SOURCE_OFFSET = {socket.AF_INET: 12, socket.AF_INET6: 20}  # (last 32 bits of) the source


class BindError(OSError):
    """The address cannot be bound (the errno and text of the first failure)."""


def bind_group(host: str, port: int, count: int, backlog: int = 1024) -> list[socket.socket]:
    """``count`` listening sockets on (host, port) in one SO_REUSEPORT group. A port of 0
    is resolved by the first socket and shared by the rest. Raises BindError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    out: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError as e:
        for sock in out:
            sock.close()
        raise BindError(e.errno or errno.EINVAL, e.strerror or str(e)) from None
    return out


def steer_by_address(sockets: list[socket.socket]) -> bool:
    """Attach the address-affinity program to the group; False where the kernel refuses
    (the kernel's hash then applies)."""
    if len(sockets) < 2:
        return True
    family = sockets[0].family
    program = [
        (_LD_W_ABS, 0, 0, (_SKF_NET_OFF + _SOURCE_OFFSET[family]) & 0xFFFFFFFF),
        (_ALU_MOD_K, 0, 0, len(sockets)),
        (_RET_A, 0, 0, 0),
    ]
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in program))
    fprog = struct.pack("HL", len(program), ctypes.addressof(code))
    try:
        sockets[0].setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError:
        return False
    return True


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        try:
            sock.close()
        except OSError:
            pass


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, as ``workers = auto`` counts)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1
