"""Shared set-up for the benchmarks: one mosquitto with a plain listener (behind the gateway)
and its own mutual-TLS listener (the direct comparison), and the gateway under twistd.

All on 127.0.0.1, on free ports, stopped at exit. Run from the repository root.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

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
    haproxy: subprocess.Popen[bytes] | None = None
    haproxy_port: int = 0

    def targets(self) -> dict[str, tuple[int, int]]:
        """name -> (port, pid of the process that terminates TLS)."""
        out = {
            "gateway": (self.gateway_port, self.gateway.pid),
            "mosquitto": (self.broker_tls, self.broker.pid),
        }
        if self.haproxy is not None:
            out["haproxy"] = (self.haproxy_port, self.haproxy.pid)
        return out


def start_haproxy(
    directory: str,
    p: support.Pki,
    upstream: int,
    crl_file: str | None = None,
    port: int | None = None,
) -> tuple[Any, int]:
    """HAProxy from Debian's packages terminating the same mutual TLS in front of the same
    mosquitto (plain): server certificate, client CA, TCP mode, and with ``crl_file`` the
    CRLs of every CA of the chain. Like the gateway (and mosquitto) it logs every
    connection to a file: ``option tcplog`` to its standard output, ``haproxy.log``.
    None if not installed."""
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        return None, 0
    port = port or support.free_port()  # (the same port again: a restart)
    crt = os.path.join(directory, "haproxy-server.pem")
    with open(crt, "wb") as out:
        for path in (p.server_cert, p.server_key):
            with open(path, "rb") as f:
                out.write(f.read())
    cfg = os.path.join(directory, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(
            "global\n  maxconn 9000\n  log stdout format raw local0 info\n"
            "defaults\n  mode tcp\n  log global\n  option tcplog\n"
            "  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n"
            f"frontend mqtts\n  bind 127.0.0.1:{port} ssl crt {crt} ca-file {p.ca_file} "
            + (f"crl-file {crl_file} " if crl_file else "")
            + "verify required\n  default_backend broker\n"
            f"backend broker\n  server b 127.0.0.1:{upstream}\n"
        )
    with open(os.path.join(directory, "haproxy.log"), "ab") as log:
        proc = subprocess.Popen([haproxy, "-f", cfg, "-db"], stdout=log, stderr=log)
    support.wait_until(lambda: support.port_open(port), what="haproxy")
    return proc, port


def stop_haproxy(proc: Any) -> None:
    """Stop what ``start_haproxy`` started (nothing if it was not installed)."""
    if proc is not None:
        proc.terminate()
        proc.wait(10)


NO_LIMITS = "max_conn_rate = 0\nmax_conn_rate_per_ip = 0\nmax_connections_per_ip = 0\n"


@contextlib.contextmanager
def setup(key_kind: str = "ec", gateway_extra: str = "") -> Iterator[Setup]:
    raise_fd_limit()
    directory = tempfile.mkdtemp(prefix="mqttgw-bench-")
    p = support.make_pki(directory, key_kind)
    tls_port = support.free_port()
    broker, plain = support.start_mosquitto(
        directory,
        extra=support.mosquitto_mtls_listener(tls_port, p),
    )
    port = support.free_port()
    # The load generator is one address (127.0.0.1) running as fast as it can: the
    # per-address and rate limits are off here, as the broker's own are
    # (bench/admission_cost.py measures what the limits cost).
    conf = support.listener_conf("bench", port, plain, p) + NO_LIMITS + gateway_extra
    gateway = support.start_gateway(directory, conf)
    haproxy, haproxy_port = start_haproxy(directory, p, plain)
    try:
        yield Setup(
            directory,
            p,
            broker,
            plain,
            tls_port,
            gateway,
            port,
            p.client("bench-device"),
            haproxy,
            haproxy_port,
        )
    finally:
        gateway.stop()
        stop_haproxy(haproxy)
        broker.stop()


def haproxy_column(results: dict[str, Any], index: int | None = None) -> list[float]:
    """HAProxy's figure for a report row, when HAProxy ran (else nothing)."""
    if "haproxy" not in results:
        return []
    value = results["haproxy"]
    return [value if index is None else value[index]]


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
    for name, gw, direct, *third in rows:
        ratio = gw / direct if direct else float("nan")
        line = f"  {name:44} {gw:12.1f} {direct:12.1f} {ratio:7.2f}"
        if third:
            line += f"   haproxy {third[0]:10.1f}, gateway/haproxy {gw / third[0]:5.2f}"
        print(line + f"   ({unit})")
    print(
        f"  (ratio = {columns[0]} / {note}, same run; "
        + ("higher is better)" if higher_is_better else "lower is better)")
    )
