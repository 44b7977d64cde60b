"""What tenants cost a full handshake, and memory: full mTLS handshakes + CONNECT per
CPU-second of two gateways in the same run, one with 100 tenants (a certificate per server
name), one with a single tenant; the clients' server name (localhost) is one tenant's in
both, so the handshakes do the same work but for the lookup among the names.

    python bench/tenants.py [--tenants 100] [--seconds 6] [--rounds 4] [--workers 2] [--crl]

With ``--crl`` each tenant has its own device CA (``cacertfile``) and its own CRL source
(``crl_cache_urls``: a CRL of 100 entries served over loopback HTTP), under CRL checking on
the listener; the device is the serving tenant's, so each handshake looks its CRL up in the
listener's one cache among every tenant's.

Rounds alternate which gateway goes first (interleaved, same sitting). Memory per configured
tenant: the difference of the two gateways' RSS after the rounds, over the extra tenants
(each holds its own pyOpenSSL context with its certificate and key).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from admission_cost import _Setup
from cryptography.hazmat.primitives.serialization import Encoding
from handshakes import measure
from harness import NO_LIMITS, raise_fd_limit

from gateway import testing as support
from gateway.demo import pki
from gateway.testing.crl import CrlHttpServer
from tests.unit.test_crl_core import make_crl


def tenant_lines(
    p: support.Pki,
    directory: str,
    count: int,
    serving: int,
    crls: CrlHttpServer | None = None,
    cas: dict[int, pki.Issued] | None = None,
) -> dict[str, str]:
    """``count`` tenants, each with its certificate; tenant ``serving`` also serves localhost.
    With ``crls``: each with its own CA (kept in ``cas``) and CRL served there."""
    lines = {}
    for i in range(count):
        names = (f"t{i}.example", f"*.t{i}.example") + (("localhost",) if i == serving else ())
        cert, key = pki.issue(p.inter, f"tenant-{i}", server=True, names=names).write(
            directory, f"tenant-{i}"
        )
        lines[f"tenant.t{i}.server_names"] = ", ".join(names)
        lines[f"tenant.t{i}.certfile"] = cert
        lines[f"tenant.t{i}.keyfile"] = key
        if crls is not None and cas is not None:
            ca = cas.setdefault(i, pki.make_ca(f"tenant {i} devices CA"))
            lines[f"tenant.t{i}.cacertfile"] = pki.write_ca_bundle(f"{directory}/ca-{i}.pem", ca)
            body = make_crl(ca, list(range(10**6, 10**6 + 100))).public_bytes(Encoding.DER)
            crls.routes[f"/t{i}.crl"] = lambda body=body: (200, body)
            lines[f"tenant.t{i}.crl_cache_urls"] = crls.url(f"/t{i}.crl")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tls", default="1.3", choices=["1.3", "1.2"])
    parser.add_argument("--crl", action="store_true", help="own CAs and CRLs per tenant")
    args = parser.parse_args()
    raise_fd_limit()
    directory = tempfile.mkdtemp(prefix="mqttgw-bench-")
    p = support.make_pki(directory)
    broker, broker_port = support.start_mosquitto(directory)
    counts = {"many": args.tenants, "one": 1}
    ports = {name: support.free_port() for name in counts}
    crls = CrlHttpServer() if args.crl else None
    cas: dict[int, pki.Issued] = {}
    serving = args.tenants // 2  # "many"'s tenant serving localhost; "one"'s is t0
    listener_crl = {}
    if crls is not None:
        crls.routes["/listener.crl"] = lambda: (
            200,
            make_crl(p.inter, []).public_bytes(Encoding.DER),
        )
        listener_crl = {"enable_crl_cache": "true", "crl_cache_urls": crls.url("/listener.crl")}
    gateways = {}
    for name, n in counts.items():
        # (with --crl, "one"'s only tenant has the CA of "many"'s serving one: one device)
        own = cas if name == "many" else {0: cas[serving]} if cas else {}
        lines = tenant_lines(p, directory, n, serving if name == "many" else 0, crls, own)
        conf = support.listener_conf(name, ports[name], broker_port, p, lines | listener_crl)
        gateways[name] = support.start_gateway(
            directory,
            conf + NO_LIMITS + "log_connect = false\n",
            f"gw-{name}",
            **({"ready": f"crl {name}: ready"} if crls is not None else {}),
        )
    device = p.client("bench-device")
    if crls is not None:  # the serving tenant's own device
        device = pki.issue(cas[serving], "bench-device").write(directory, "t-device")
    s = _Setup(p, device)
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
        if crls is not None:
            crls.stop()
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
