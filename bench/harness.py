"""Shared set-up for the benchmarks: one mosquitto with a plain listener (behind the gateway)
and its own mutual-TLS listener (the direct comparison), and the gateway under twistd.

All on 127.0.0.1, on free ports, stopped at exit. Run from the repository root.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import tempfile
from collections.abc import Iterator

import attrs

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gateway import testing as support


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@attrs.define
class Setup:
    dir: str
    pki: support.Pki
    broker: support.Process
    broker_plain: int
    broker_tls: int
    gateway: support.Process
    gateway_port: int
    device: tuple[str, str]

    def targets(self) -> dict[str, tuple[int, int]]:
        """name -> (port, pid of the process that terminates TLS)."""
        return {
            "gateway": (self.gateway_port, self.gateway.pid),
            "mosquitto": (self.broker_tls, self.broker.pid),
        }


NO_LIMITS = "max_conn_rate = 0\nmax_conn_rate_per_ip = 0\nmax_connections_per_ip = 0\n"


@contextlib.contextmanager
def setup(key_kind: str = "ec", gateway_extra: str = "") -> Iterator[Setup]:
    raise_fd_limit()
    directory = tempfile.mkdtemp(prefix="mqttgw-bench-")
    p = support.make_pki(directory, key_kind)
    tls_port = support.free_port()
    broker, plain = support.start_mosquitto(
        directory,
        extra=(
            f"listener {tls_port} 127.0.0.1\ncafile {p.ca_file}\ncertfile {p.server_cert}\n"
            f"keyfile {p.server_key}\nrequire_certificate true\n"
            "max_connections -1\n"
        ),
    )
    port = support.free_port()
    # The load generator is one address (127.0.0.1) running as fast as it can: the
    # per-address and rate limits are off here, as the broker's own are
    # (bench/admission_cost.py measures what the limits cost).
    conf = support.listener_conf("bench", port, plain, p) + NO_LIMITS + gateway_extra
    gateway = support.start_gateway(directory, conf)
    try:
        yield Setup(directory, p, broker, plain, tls_port, gateway, port, p.client("bench-device"))
    finally:
        gateway.stop()
        broker.stop()


def report(
    title: str,
    rows: list[tuple[str, float, float]],
    unit: str,
    higher_is_better: bool,
    columns: tuple[str, str] = ("gateway", "mosquitto"),
    note: str = "mosquitto reached directly over mutual TLS",
) -> None:
    """Print the gateway beside a reference measured in the same run, with the ratio."""
    print(f"\n{title}")
    print(f"  {'measure':44} {columns[0]:>12} {columns[1]:>12} {'ratio':>7}")
    for name, gw, direct in rows:
        ratio = gw / direct if direct else float("nan")
        print(f"  {name:44} {gw:12.1f} {direct:12.1f} {ratio:7.2f}   ({unit})")
    print(
        f"  (ratio = {columns[0]} / {note}, same run; "
        + ("higher is better)" if higher_is_better else "lower is better)")
    )
