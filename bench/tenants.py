"""What tenants cost a full handshake, and memory: full mTLS handshakes + CONNECT per
CPU-second of two gateways in the same run, one with 100 tenants (a certificate per server
name), one with a single tenant; the clients' server name (localhost) is one tenant's in
both, so the handshakes do the same work but for the lookup among the names.

    python bench/tenants.py [--tenants 100] [--seconds 6] [--rounds 4] [--workers 2]

Rounds alternate which gateway goes first (interleaved, same sitting). Memory per configured
tenant: the difference of the two gateways' RSS after the rounds, over the extra tenants
(each holds its own pyOpenSSL context with its certificate and key).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from admission_cost import _Setup
from handshakes import measure
from harness import NO_LIMITS, raise_fd_limit

from gateway import testing as support
from gateway.demo import pki


def tenant_lines(p: support.Pki, directory: str, count: int, serving: int) -> dict[str, str]:
    """``count`` tenants, each with its certificate; tenant ``serving`` also serves localhost."""
    lines = {}
    for i in range(count):
        names = (f"t{i}.example", f"*.t{i}.example") + (("localhost",) if i == serving else ())
        cert, key = pki.issue(p.inter, f"tenant-{i}", server=True, names=names).write(
            directory, f"tenant-{i}"
        )
        lines[f"tenant.t{i}.server_names"] = ", ".join(names)
        lines[f"tenant.t{i}.certfile"] = cert
        lines[f"tenant.t{i}.keyfile"] = key
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tls", default="1.3", choices=["1.3", "1.2"])
    args = parser.parse_args()
    raise_fd_limit()
    directory = tempfile.mkdtemp(prefix="mqttgw-bench-")
    p = support.make_pki(directory)
    broker, broker_port = support.start_mosquitto(directory)
    counts = {"many": args.tenants, "one": 1}
    ports = {name: support.free_port() for name in counts}
    gateways = {
        name: support.start_gateway(
            directory,
            support.listener_conf(
                name, ports[name], broker_port, p, tenant_lines(p, directory, n, n // 2)
            )
            + NO_LIMITS
            + "log_connect = false\n",
            f"gw-{name}",
        )
        for name, n in counts.items()
    }
    s = _Setup(p, p.client("bench-device"))
    per_cpu: dict[str, list[float]] = {"many": [], "one": []}
    try:
        for round_ in range(args.rounds):
            for name in ("many", "one") if round_ % 2 == 0 else ("one", "many"):
                rate, cpu_rate = measure(ports[name], gateways[name].pid, s, args)
                per_cpu[name].append(cpu_rate)
                print(
                    f"round {round_ + 1} {counts[name]} tenants: {rate:.0f}/s, {cpu_rate:.0f}/CPU-s"
                )
        rss = {name: support.rss_kib(gw.pid) for name, gw in gateways.items()}
    finally:
        for gw in gateways.values():
            gw.stop()
        broker.stop()
    ratios = [m / o for m, o in zip(per_cpu["many"], per_cpu["one"], strict=True)]
    print(
        f"\nFull mTLS handshakes + CONNECT per CPU-second, TLS {args.tls}, {args.rounds} "
        f"interleaved rounds of {args.seconds:.0f}s, the clients' name served by one tenant"
    )
    print(f"  {args.tenants} tenants (median): {statistics.median(per_cpu['many']):.1f}")
    print(f"  1 tenant (median):    {statistics.median(per_cpu['one']):.1f}")
    print(
        f"  {args.tenants}/1 per round: {', '.join(f'{r:.3f}' for r in ratios)}; "
        f"median {statistics.median(ratios):.3f}"
    )
    extra = (rss["many"] - rss["one"]) / max(1, args.tenants - 1)
    print(f"  memory per configured tenant: {extra:.1f} KiB (RSS difference / extra tenants)")


if __name__ == "__main__":
    main()
