"""What judging the read rules per delivery costs (``acl_read_mode = delivery``), in process:
the broker's stream of 64-byte QoS 0 PUBLISHes (topics spread over 50 names, one in ten
denied) through one session's policy edge, as it arrives in 16 KiB reads, per message, in
``filter`` mode (boundaries only) and in ``delivery`` mode (every PUBLISH read and judged).

    python bench/acl_delivery.py [--messages 200000] [--rounds 5]

The sans-IO core only: the relay's own work per read (TLS, the socket) is the same in both
modes and is left out, so this is the difference a delivery adds, not a ratio of the whole.
"""

from __future__ import annotations

import argparse
import statistics
import time

from harness import raise_fd_limit  # noqa: F401  (the benchmarks' path set-up)

from gateway.choices import AclReadMode
from gateway.mqtt.acl import parse_acl
from gateway.mqtt.packets import encode_length
from gateway.mqtt.policy import PolicyEdge, Who

RULES = parse_acl("topic readwrite #\ntopic deny secret/#\n")


def publish(topic: str, payload: bytes) -> bytes:
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + payload
    return b"\x30" + encode_length(len(body)) + body


def stream(messages: int) -> list[bytes]:
    topics = [f"{'secret' if i % 10 == 0 else 'sensors'}/{i}" for i in range(50)]
    data = b"".join(publish(topics[i % 50], b"x" * 64) for i in range(messages))
    return [data[i : i + 16384] for i in range(0, len(data), 16384)]


def run(mode: AclReadMode, reads: list[bytes], messages: int) -> float:
    edge = PolicyEdge(None, lambda: RULES, Who("d", "c"), 4, 1 << 20, 0.0, read_mode=mode)
    edge.from_device(b"\x82\x06\x00\x01\x00\x01#\x01", 0.0)  # SUBSCRIBE #
    start = time.perf_counter()
    for data in reads:
        edge.from_broker(data)
    return (time.perf_counter() - start) / messages * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    reads = stream(args.messages)
    times: dict[AclReadMode, list[float]] = {m: [] for m in AclReadMode}
    for _ in range(args.rounds):
        for mode in AclReadMode:
            times[mode].append(run(mode, reads, args.messages))
    filt = statistics.median(times[AclReadMode.FILTER])
    deliv = statistics.median(times[AclReadMode.DELIVERY])
    print(
        f"{args.messages} deliveries of 64-byte QoS 0 PUBLISHes in 16 KiB reads, "
        f"median of {args.rounds}"
    )
    print(f"  filter:   {filt:.3f} us per message (boundaries only)")
    print(f"  delivery: {deliv:.3f} us per message (each read and judged)")
    print(f"  a delivery judged costs {deliv - filt:.3f} us more")


if __name__ == "__main__":
    main()
