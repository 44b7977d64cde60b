"""What following the broker's packet boundaries costs MQTT 5 sessions on the relay's short
path (so that a close of the gateway's own says why, between two packets): QoS 0 PUBLISHes of
64 bytes, one per TLS record, one publisher -> one subscriber through one gateway, both
MQTT 3.1.1 (not followed) against both MQTT 5 (followed), interleaved rounds, fresh sessions.

    python bench/mqtt5_relay.py [--messages 200000] [--rounds 5]

Reported: messages per second and per CPU-second of the gateway, and the ratio 5 / 3.1.1.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time

from harness import NO_LIMITS, raise_fd_limit

from gateway import testing as support

PAYLOAD = b"x" * 64


def publish(level: int) -> bytes:
    body = b"\x00\x01b" + (b"\x00" if level == 5 else b"") + PAYLOAD
    return bytes((0x30, len(body))) + body


def connect(port: int, ctx: object, client_id: str, level: int) -> object:
    s = support.tls_connect(port, ctx, timeout=60)  # type: ignore[arg-type]
    s.sendall(support.connect_packet(client_id, level=level, keep_alive=0))
    head = support.read_exact(s, 2)
    assert head[0] == 0x20 and support.read_exact(s, head[1])[1] == 0
    return s


def relay(
    port: int, pid: int, ctx: object, level: int, messages: int, r: int
) -> tuple[float, float]:
    sub = connect(port, ctx, f"sub-{level}-{r}", level)
    options = b"\x00" if level == 5 else b""
    body = b"\x00\x01" + options + b"\x00\x01b\x00"
    sub.sendall(bytes((0x82, len(body))) + body)  # type: ignore[attr-defined]
    head = support.read_exact(sub, 2)  # type: ignore[arg-type]
    support.read_exact(sub, head[1])  # type: ignore[arg-type]
    pub = connect(port, ctx, f"pub-{level}-{r}", level)
    packet = publish(level)
    cpu0, start = support.cpu_seconds(pid), time.monotonic()

    def send() -> None:
        for _ in range(messages):
            pub.sendall(packet)  # type: ignore[attr-defined]

    writer = threading.Thread(target=send)
    writer.start()
    expected, received = messages * len(packet), 0
    while received < expected:
        data = sub.recv(1 << 20)  # type: ignore[attr-defined]
        if not data:
            raise ConnectionError("the subscriber was closed")
        received += len(data)
    elapsed, cpu = time.monotonic() - start, support.cpu_seconds(pid) - cpu0
    writer.join()
    pub.close()  # type: ignore[attr-defined]
    sub.close()  # type: ignore[attr-defined]
    return messages / elapsed, messages / cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    raise_fd_limit()
    directory = tempfile.mkdtemp(prefix="mqttgw-bench-mqtt5-")
    p = support.make_pki(directory)
    broker, plain = support.start_mosquitto(directory)
    port = support.free_port()
    conf = support.listener_conf("r", port, plain, p) + NO_LIMITS + "log_connect = false\n"
    gateway = support.start_gateway(directory, conf)
    ctx = support.client_context(p, p.client("bench-mqtt5"))
    results: dict[int, list[tuple[float, float]]] = {4: [], 5: []}
    try:
        for r in range(args.rounds):
            for level in (4, 5) if r % 2 == 0 else (5, 4):
                rate, per_cpu = relay(port, gateway.pid, ctx, level, args.messages, r)
                results[level].append((rate, per_cpu))
                print(
                    f"  round {r + 1} MQTT {'5' if level == 5 else '3.1.1'}: "
                    f"{rate:.0f}/s, {per_cpu:.0f}/CPU-s",
                    flush=True,
                )
    finally:
        gateway.stop()
        broker.stop()
    med = {
        k: (statistics.median(x for x, _ in v), statistics.median(y for _, y in v))
        for k, v in results.items()
    }
    print(f"\n64-byte QoS 0, one per TLS record, {args.messages} a round, {args.rounds} rounds")
    print(f"  MQTT 3.1.1 (short path):         {med[4][0]:10.0f}/s {med[4][1]:10.0f}/CPU-s")
    print(f"  MQTT 5 (boundaries followed):    {med[5][0]:10.0f}/s {med[5][1]:10.0f}/CPU-s")
    print(
        f"  MQTT 5 / 3.1.1:                  {med[5][0] / med[4][0]:10.2f}   "
        f"{med[5][1] / med[4][1]:10.2f}"
    )


if __name__ == "__main__":
    main()
