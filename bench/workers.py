"""The gateway with worker processes beside one process, HAProxy and mosquitto.

    python bench/workers.py handshakes [--rounds 3] [--seconds 8] [--clients 4] [--crl-entries 1000]
    python bench/workers.py efficiency [--rounds 3] [--seconds 10] [--crl-entries 1000]
    python bench/workers.py relay [--rounds 3] [--messages 50000] [--publishers 4]
    python bench/workers.py idle [--count 2000]
    python bench/workers.py crl [--entries 1000000] [--seconds 8]
    python bench/workers.py storm [--devices 300]

Every command takes ``--key ec|rsa`` (default ec): the kind of every key of the PKI.

Every round starts fresh processes: mosquitto (a plain listener behind the proxies and its
own mutual-TLS listener), the gateway with ``workers = auto``, the gateway in one process,
and HAProxy (Debian's package: threads on every CPU, the same certificate, client CA and
verification). The targets are measured one after another in an order that rotates from
round to round; medians and ratios are reported. CPU is that of the whole process tree
(master, workers and the CRL worker processes; HAProxy's threads). Clients connect from
several 127.0.0.x addresses, as a fleet does (the gateway's default address affinity would
put a single address on a single worker).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import glob
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from harness import NO_LIMITS, raise_fd_limit, start_haproxy, stop_haproxy

from gateway import testing as support

CONNACK = b"\x20\x02\x00\x00"
KEYS = {"ec": "ECDSA P-256", "rsa": "RSA 2048"}


# -- the process tree --------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat(int(name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds of pid and every descendant, live or reaped."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in descendants(pid):
        fields = _stat(p)
        if fields is not None:  # utime stime cutime cstime
            total += sum(int(x) for x in fields[11:15])
    return total / ticks


def tree_memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB of pid and its descendants: PSS counts a shared page once."""
    rss = pss = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return rss, pss


# -- the targets -------------------------------------------------------------------------------


# This checkout: its gateways import the package and find the twistd plugin here.
HERE_TREE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class World:
    def __init__(self, key_kind: str = "ec", baseline: str | None = None) -> None:
        raise_fd_limit()
        # With a baseline (another checkout of mqttgw), every gateway also runs from it, as
        # NAME@base, in the same round: before/after pairs that meet the same machine.
        self.baseline = baseline
        self.dir = tempfile.mkdtemp(prefix="mqttgw-bench-workers-")
        self.key_kind = key_kind
        self.pki = support.make_pki(self.dir, key_kind)
        self.device = self.pki.client("bench-device")
        self.crl_file: str | None = None
        self.crl_urls: list[str] = []
        self.revoked: tuple[str, str] | None = None
        self._http: Any = None

    def with_crls(self, entries: int) -> None:
        """Every target checks revocation: the devices CA's CRL with ``entries`` entries and
        the root's, as files for mosquitto (``crlfile``) and HAProxy (``crl-file``, which
        checks the whole chain), fetched from a local CA endpoint by the gateways."""
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        from gateway.testing.crl import CrlHttpServer, big_crl_der, crl_der

        self.revoked = self.pki.client("bench-revoked")
        with open(self.revoked[0], "rb") as f:
            revoked_serial = x509.load_pem_x509_certificate(f.read()).serial_number
        base = 0x4000_0000_0000_0000_0000_0000_0000_0000
        listed = [base + i * 0x9E3779B97F4A7C15 for i in range(entries - 1)] + [revoked_serial]
        self._http = CrlHttpServer()
        self.crl_file = os.path.join(self.dir, "crls.pem")
        with open(self.crl_file, "wb") as out:
            for path, der in (
                ("/devices.crl", crl_der(self.pki.inter, listed)),
                ("/root.crl", big_crl_der(self.pki.root, 1)),
            ):
                self._http.serve(path, 200, der)
                self.crl_urls.append(self._http.url(path))
                out.write(x509.load_der_x509_crl(der).public_bytes(Encoding.PEM))

    def refuses_revoked(self, port: int) -> bool:
        """Whether the target at ``port`` refuses the device listed in the CRL (it must:
        every target really checks revocation)."""
        import ssl

        assert self.revoked is not None
        try:
            with support.tls_connect(port, support.client_context(self.pki, self.revoked)) as s:
                s.sendall(support.connect_packet("revoked", keep_alive=0))
                return support.read_exact(s, 4) != CONNACK
        except (ssl.SSLError, OSError, ConnectionError, EOFError):
            return True

    def close(self) -> None:
        if self._http is not None:
            self._http.stop()

    def _crl_conf(self, name: str) -> str:
        if not self.crl_urls:
            return ""
        prefix = f"listener.ssl.{name}"
        return (
            f"{prefix}.enable_crl_cache = true\n"
            f"{prefix}.crl_cache_urls = {','.join(self.crl_urls)}\n"
            f"{prefix}.crl_cache_max_size = 64MB\n"
        )

    @contextlib.contextmanager
    def round(self, extra: str = "", gateways: dict[str, str] | None = None) -> Iterator[dict]:
        """Fresh mosquitto, gateways (name -> extra configuration) and HAProxy:
        name -> (port, pid)."""
        if gateways is None:
            gateways = {"gw-auto": "workers = auto\n", "gw-1": "workers = 1\n"}
        runs: dict[str, tuple[str, dict[str, str]]] = {}
        for name, conf_extra in gateways.items():
            runs[name] = (conf_extra, {"PYTHONPATH": HERE_TREE})
            if self.baseline is not None:
                runs[f"{name}@base"] = (conf_extra, {"PYTHONPATH": self.baseline})
        tls_port = support.free_port()
        broker, plain = support.start_mosquitto(
            self.dir,
            extra=support.mosquitto_mtls_listener(tls_port, self.pki)
            + (f"crlfile {self.crl_file}\n" if self.crl_file else ""),
        )
        started: list[support.Process] = []
        targets: dict[str, tuple[int, int]] = {"mosquitto": (tls_port, broker.pid)}
        haproxy = None
        try:
            for name, (conf_extra, env) in runs.items():
                port = support.free_port()
                listener = name.replace("@", "-")  # a listener name is [A-Za-z0-9_-]
                conf = support.listener_conf(listener, port, plain, self.pki) + NO_LIMITS
                conf += "stats_log_interval = 1h\n" + conf_extra + extra + self._crl_conf(listener)
                workers = "workers = auto" in conf_extra
                gw = support.start_gateway(
                    self.dir,
                    conf,
                    name.replace("@", "-"),
                    ready="serving" if workers else "listener ",
                    env=env,
                )
                started.append(gw)
                if workers:
                    cpus = len(os.sched_getaffinity(0))
                    support.wait_until(
                        lambda gw=gw, n=cpus: gw.log().count(") serving") >= n, 60, what="workers"
                    )
                targets[name] = (port, gw.pid)
            haproxy, hport = start_haproxy(self.dir, self.pki, plain, self.crl_file)
            if haproxy is not None:
                targets["haproxy"] = (hport, haproxy.pid)
            time.sleep(1.0)
            yield targets
        finally:
            for gw in started:
                gw.stop()
            stop_haproxy(haproxy)
            broker.stop()


def rounds(
    world: World,
    count: int,
    measure: Callable[[str, int, int], tuple[float, ...]],
    **round_args: Any,
) -> dict[str, list[tuple[float, ...]]]:
    results: dict[str, list[tuple[float, ...]]] = {}
    for r in range(count):
        with world.round(**round_args) as targets:
            names = list(targets)
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                port, pid = targets[name]
                value = measure(name, port, pid)
                results.setdefault(name, []).append(value)
                print(f"  round {r + 1} {name}: " + ", ".join(f"{v:.1f}" for v in value))
    return results


def table(results: dict[str, list[tuple[float, ...]]], columns: list[str]) -> None:
    names = list(results)
    print(f"\n  {'':16}" + "".join(f"{c:>28}" for c in columns))
    med = {
        n: [statistics.median(v[i] for v in results[n]) for i in range(len(columns))] for n in names
    }
    for n in names:
        print(f"  {n:16}" + "".join(f"{x:28.1f}" for x in med[n]))
    pairs = [(n, ref) for ref in ("haproxy", "mosquitto", "gw-1") if ref in med for n in names]
    pairs = [(n, ref) for n, ref in pairs if n.startswith("gw-") and n != ref and "@" not in n]
    pairs += [(n, f"{n}@base") for n in names if f"{n}@base" in med]  # after / before
    for n, ref in pairs:
        ratios = []
        for i in range(len(columns)):
            per_round = [
                a[i] / b[i] for a, b in zip(results[n], results[ref], strict=False) if b[i]
            ]
            ratios.append(
                f"{statistics.median(per_round):.2f} ({min(per_round):.2f}-{max(per_round):.2f})"
                if per_round
                else "-"
            )
        print(f"  {n}/{ref}:".ljust(14) + "".join(f"{r:>28}" for r in ratios))


# -- handshakes --------------------------------------------------------------------------------


# Clients connect from these addresses (16 of them), as a fleet does: client i of n takes
# every n-th one, so that every address is in use whatever the number of clients.
SOURCES = [f"127.0.0.{a}" for a in range(10, 26)]


def sources_of(client: int, clients: int) -> list[str]:
    return SOURCES[client % len(SOURCES) :: clients] or [SOURCES[client % len(SOURCES)]]


def _handshaker(
    ports: list[int],
    pki: Any,
    device: Any,
    sources: list[str],
    seconds: float,
    out: Any,
    resume: bool = False,
) -> None:
    """Handshakes for ``seconds``, each connection to the next of ``ports`` in turn and from
    the next of ``sources``; puts (the count per port, the resumed count per port) on
    ``out``. With ``resume``, each connection offers the TLS session its port and address
    last gave (TLS 1.3 tickets)."""
    import socket

    ctx = support.client_context(pki, device, "1.3")
    connect = support.connect_packet("hs", keep_alive=0)
    done = [0] * len(ports)
    resumed = [0] * len(ports)
    sessions: dict[tuple[int, str], Any] = {}
    deadline = time.monotonic() + seconds
    turn = 0
    n = 0
    while time.monotonic() < deadline:
        k, turn = turn, (turn + 1) % len(ports)
        source = sources[n % len(sources)]
        n += 1
        raw = socket.create_connection(
            ("127.0.0.1", ports[k]), timeout=10, source_address=(source, 0)
        )
        offered = sessions.get((k, source)) if resume else None
        with ctx.wrap_socket(raw, server_hostname="localhost", session=offered) as s:
            s.sendall(connect)
            if support.read_exact(s, 4) != CONNACK:
                raise RuntimeError("no CONNACK")
            if resume:
                resumed[k] += s.session_reused
                sessions[(k, source)] = s.session
        done[k] += 1
    out.put((done, resumed))


def _storm(world: World, port: int, clients: int, seconds: float) -> tuple[int, float]:
    """``clients`` processes (one address each) handshaking for ``seconds``:
    (handshakes completed, seconds elapsed)."""
    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    start = time.monotonic()
    procs = [
        multiprocessing.Process(
            target=_handshaker,
            args=([port], world.pki, world.device, sources_of(i, clients), seconds, queue),
        )
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    total = sum(queue.get(timeout=seconds + 60)[0][0] for _ in procs)
    for p in procs:
        p.join()
    return total, time.monotonic() - start


def handshakes(args: argparse.Namespace) -> None:
    world = World(args.key, args.baseline)
    if args.crl_entries:
        world.with_crls(args.crl_entries)

    def measure(name: str, port: int, pid: int) -> tuple[float, ...]:
        if args.crl_entries and not world.refuses_revoked(port):
            raise SystemExit(f"{name} let a revoked device in: its CRL checking is off")
        cpu0 = tree_cpu(pid)
        total, elapsed = _storm(world, port, args.clients, args.seconds)
        cpu = tree_cpu(pid) - cpu0
        return total / elapsed, total / cpu if cpu else float("nan")

    results = rounds(world, args.rounds, measure)
    world.close()
    crls = f"CRLs checked ({args.crl_entries} entries)" if args.crl_entries else "no CRLs"
    print(
        f"\n{crls}. Full mTLS handshakes (TLS 1.3, {KEYS[world.key_kind]}, client certificate, no "
        "resumption) + "
        f"CONNECT/CONNACK; {args.clients} client processes, {args.seconds:g}s per target per "
        f"round, {args.rounds} rounds, {len(os.sched_getaffinity(0))} CPUs"
    )
    table(results, ["handshakes/s", "handshakes per CPU-second"])


def efficiency(args: argparse.Namespace) -> None:
    """Handshakes per CPU-second, the servers side by side at the same time: every client
    sends its connections to each server in turn, so every server meets the same machine
    at the same moment (on a shared, noisy machine the sequential rounds of ``handshakes``
    swing by 10-20 % from one sitting to the next; this does not). mosquitto is left out:
    it is also the broker behind the others, so its CPU is not its own here."""
    world = World(args.key, args.baseline)
    if args.crl_entries:
        world.with_crls(args.crl_entries)
    results: dict[str, list[tuple[float, ...]]] = {}
    for r in range(args.rounds):
        with world.round() as targets:
            names = [n for n in targets if n != "mosquitto"]
            names = names[r % len(names) :] + names[: r % len(names)]  # no place favoured
            for name in names:
                if args.crl_entries and not world.refuses_revoked(targets[name][0]):
                    raise SystemExit(f"{name} let a revoked device in: its CRL checking is off")
            ports = [targets[n][0] for n in names]
            cpu0 = {n: tree_cpu(targets[n][1]) for n in names}
            queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
            procs = [
                multiprocessing.Process(
                    target=_handshaker,
                    args=(
                        ports,
                        world.pki,
                        world.device,
                        sources_of(i, args.clients),
                        args.seconds,
                        queue,
                        args.resume,
                    ),
                )
                for i in range(args.clients)
            ]
            for p in procs:
                p.start()
            per_client = [queue.get(timeout=args.seconds + 90) for _ in procs]
            counts = [sum(c) for c in zip(*(d for d, _ in per_client), strict=True)]
            resumed = [sum(c) for c in zip(*(r for _, r in per_client), strict=True)]
            for p in procs:
                p.join()
            for name, count, again in zip(names, counts, resumed, strict=True):
                cpu = tree_cpu(targets[name][1]) - cpu0[name]
                share = 100.0 * again / count if count else 0.0
                results.setdefault(name, []).append((count / cpu if cpu else float("nan"), share))
                print(
                    f"  round {r + 1} {name}: {count} handshakes ({share:.0f} % resumed), "
                    f"{cpu:.2f} CPU-s"
                )
    world.close()
    crls = f"CRLs checked ({args.crl_entries} entries)" if args.crl_entries else "no CRLs"
    kind = "resumed (TLS 1.3 tickets)" if args.resume else "full"
    print(
        f"\n{crls}. {kind} handshakes per CPU-second (TLS 1.3, {KEYS[world.key_kind]}, client "
        f"certificate, CONNECT/CONNACK), all servers at once, {args.clients} clients from "
        f"{len(SOURCES)} addresses alternating between them, {args.seconds:g}s a round, "
        f"{args.rounds} rounds"
    )
    table(results, ["handshakes per CPU-second", "% resumed"])


# -- relay -------------------------------------------------------------------------------------

TOPIC_PAYLOAD = 64


def relay(args: argparse.Namespace) -> None:
    world = World(args.key, args.baseline)
    lines = os.path.join(world.dir, "lines.txt")
    with open(lines, "wb") as f:
        for i in range(args.messages):
            f.write(f"{i:0{TOPIC_PAYLOAD}d}".encode() + b"\n")
    cert, key = world.device

    def measure(name: str, port: int, pid: int) -> tuple[float, ...]:
        subs = []
        for i in range(args.publishers):
            source = SOURCES[i % len(SOURCES)]
            import socket

            raw = socket.create_connection(
                ("127.0.0.1", port), timeout=60, source_address=(source, 0)
            )
            sub = support.client_context(world.pki, world.device).wrap_socket(
                raw, server_hostname="localhost"
            )
            sub.sendall(support.connect_packet(f"sub-{name}-{i}", keep_alive=0))
            assert support.read_exact(sub, 4) == CONNACK
            topic = f"t{i}".encode()
            subscribe = b"\x00\x01\x00" + bytes([len(topic)]) + topic + b"\x00"
            sub.sendall(b"\x82" + bytes([len(subscribe)]) + subscribe)
            assert support.read_exact(sub, 5)[0] == 0x90
            subs.append(sub)
        packet = 2 + 2 + 2 + TOPIC_PAYLOAD  # header, topic length, "tN", payload
        cpu0 = tree_cpu(pid)
        start = time.monotonic()
        pubs = []
        for i in range(args.publishers):
            with open(lines, "rb") as stdin:
                pubs.append(
                    subprocess.Popen(
                        [
                            *("mosquitto_pub", "-h", "localhost", "-p", str(port)),
                            *("-A", SOURCES[(args.publishers + i) % len(SOURCES)]),
                            *("--cafile", world.pki.ca_file, "--cert", cert, "--key", key),
                            *("-t", f"t{i}", "-l", "-q", "0", "-i", f"pub-{name}-{i}"),
                        ],
                        stdin=stdin,
                    )
                )
        import selectors

        sel = selectors.DefaultSelector()
        got = {s: 0 for s in subs}
        for s in subs:
            sel.register(s, selectors.EVENT_READ)
        expected = args.messages * packet
        while any(v < expected for v in got.values()):
            for key_, _ in sel.select(60):
                s = key_.fileobj
                data = s.recv(1 << 20)  # type: ignore[union-attr]
                if not data:
                    raise RuntimeError("subscriber closed")
                got[s] += len(data)  # type: ignore[index]
        elapsed = time.monotonic() - start
        cpu = tree_cpu(pid) - cpu0
        for p in pubs:
            p.wait(30)
        for s in subs:
            s.close()
        total = args.messages * args.publishers
        return total / elapsed, total / cpu if cpu else float("nan")

    gateways = None
    if args.limits:
        # The policy edge on: per-device limits never reached (the cost of reading every
        # packet and paying its tokens), then with a 100-line acl_file too, beside the
        # short path (gw-1).
        acl = os.path.join(world.dir, "acl")
        with open(acl, "w") as f:
            f.writelines(f"pattern readwrite fleet{i}/%u/#\n" for i in range(96))
            f.writelines(f"topic readwrite t{i}\n" for i in range(4))
        limits = "workers = 1\nmessages_rate = 1000000/s\nbytes_rate = 1GB/s\n"
        gateways = {
            "gw-1": "workers = 1\n",
            "gw-limits": limits,
            "gw-policy": limits + f"acl_file = {acl}\n",
        }
    results = rounds(world, args.rounds, measure, gateways=gateways)
    print(
        f"\nQoS 0, 64-byte payloads, one PUBLISH per TLS record; {args.publishers} publishers "
        f"(mosquitto_pub -l) x {args.messages} messages, each to its own subscriber, all "
        f"through the target; {args.rounds} rounds"
    )
    table(results, ["messages/s", "messages per CPU-second"])


# -- idle memory -------------------------------------------------------------------------------


def _hold(port: int, world: World, count: int, sources: int) -> list[Any]:
    import socket

    ctx = support.client_context(world.pki, world.device, "1.3")
    socks = []
    for i in range(count):
        raw = socket.create_connection(
            ("127.0.0.1", port), timeout=30, source_address=(f"127.0.0.{2 + i % sources}", 0)
        )
        s = ctx.wrap_socket(raw, server_hostname="localhost")
        s.sendall(support.connect_packet(f"idle-{i}", keep_alive=0))
        assert support.read_exact(s, 4) == CONNACK
        socks.append(s)
    return socks


def idle(args: argparse.Namespace) -> None:
    world = World(args.key, args.baseline)
    for count in args.count:

        def measure(name: str, port: int, pid: int, count: int = count) -> tuple[float, ...]:
            import resource

            limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            if name in ("gw-1", "haproxy") and 2 * count + 100 > limit:
                # One process holding a device's and the broker's socket per connection:
                # over this container's file limit (which cannot be raised here).
                print(f"  {name}: {count} connections need {2 * count} files; limit {limit}")
                nan = float("nan")
                return nan, nan, nan, nan
            for s in _hold(port, world, 8, 8):
                s.close()
            time.sleep(1.0)
            rss0, pss0 = tree_memory(pid)
            socks = _hold(port, world, count, 50)
            time.sleep(2.0)
            rss1, pss1 = tree_memory(pid)
            for s in socks:
                s.close()
            return (rss1 - rss0) / count, (pss1 - pss0) / count, rss1 / 1024, pss1 / 1024

        results = rounds(world, args.rounds, measure)
        print(f"\nIdle mTLS MQTT connections: {count}, from 50 addresses; {args.rounds} round(s)")
        table(results, ["RSS KiB/conn", "PSS KiB/conn", "total RSS MiB", "total PSS MiB"])


# -- a large CRL -------------------------------------------------------------------------------


def crl(args: argparse.Namespace) -> None:
    from gateway.testing.crl import CrlHttpServer, big_crl_der

    world = World(args.key, args.baseline)
    http = CrlHttpServer()
    http.serve("/big.crl", 200, big_crl_der(world.pki.inter, args.entries))
    http.serve("/root.crl", 200, big_crl_der(world.pki.root, 1))
    crl_conf = (
        f"listener.ssl.{{name}}.enable_crl_cache = true\n"
        f"listener.ssl.{{name}}.crl_cache_urls = {http.url('/big.crl')},{http.url('/root.crl')}\n"
        f"listener.ssl.{{name}}.crl_cache_max_size = 64MB\n"
    )
    gateways = {
        "gw-auto": "workers = auto\n",
        "gw-auto-crl": "workers = auto\n" + crl_conf.format(name="gw-auto-crl"),
        "gw-1-crl": "workers = 1\n" + crl_conf.format(name="gw-1-crl"),
    }

    def measure(name: str, port: int, pid: int) -> tuple[float, ...]:
        if name in ("mosquitto", "haproxy"):
            return (0.0, 0.0, 0.0, 0.0)
        total, elapsed = _storm(world, port, 4, args.seconds)
        rss, pss = tree_memory(pid)
        # The workers' CRL snapshots live in a memory file system (/dev/shm or systemd's
        # runtime directory): their pages are counted once, here, not in any process's RSS
        # (a lookup touches only the pages of its bisection).
        shm = 0
        for d in glob.glob("/dev/shm/mqttgw-*"):
            shm += sum(os.path.getsize(f) for f in glob.glob(os.path.join(d, "crl-*.snapshot")))
        return total / elapsed, rss / 1024, pss / 1024, shm / 1024 / 1024

    http.hits.clear()
    results = rounds(world, args.rounds, measure, gateways=gateways)
    http.stop()
    print(
        f"\nA {args.entries}-entry CRL: handshakes/s and memory of the whole tree; CA fetches "
        f"of /big.crl in all rounds: {http.hits.get('/big.crl', 0)} "
        f"(one per gateway with the CRL per round: {2 * args.rounds})"
    )
    results.pop("mosquitto", None)
    results.pop("haproxy", None)
    table(results, ["handshakes/s", "tree RSS MiB", "tree PSS MiB", "snapshots MiB"])


# -- a reconnect storm -------------------------------------------------------------------------


def storm(args: argparse.Namespace) -> None:
    """Devices from many addresses connect once (each keeps its TLS session), all drop, and
    all reconnect at once offering their session: how many resume?"""
    import socket
    import ssl

    world = World(args.key, args.baseline)
    gateways = {
        "gw-auto": "workers = auto\n",
        "gw-auto-kernel": "workers = auto\nworker_affinity = kernel\n",
        "gw-1": "workers = 1\n",
    }

    def measure(name: str, port: int, pid: int) -> tuple[float, ...]:
        ctx = support.client_context(world.pki, world.device, "1.2")
        sessions = []
        for i in range(args.devices):
            src = f"127.0.{1 + i // 250}.{2 + i % 250}"
            raw = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(src, 0))
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(support.connect_packet(f"storm-{i}", keep_alive=0))
                assert support.read_exact(s, 4) == CONNACK
                sessions.append((src, s.session))
        resumed = 0
        for src, session in sessions:
            raw = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(src, 0))
            try:
                with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
                    s.sendall(support.connect_packet("again", keep_alive=0))
                    support.read_exact(s, 4)
                    resumed += s.session_reused
            except ssl.SSLError:
                pass
        # (No rate: one sequential client without TCP_NODELAY measures its own Nagle waits.)
        return (100.0 * resumed / len(sessions),)

    results = rounds(world, args.rounds, measure, gateways=gateways)
    print(
        f"\nReconnect storm: {args.devices} devices (distinct addresses) reconnect offering "
        "their TLS 1.2 session"
    )
    table(results, ["% resumed"])


# -- a start with a large CRL ------------------------------------------------------------------


def _probe(
    port: int, world: World, stop: float, out: list[tuple[float, float, str]], t0: float
) -> None:
    """One device trying to connect from before the port exists until ``stop``: each
    attempt's (time since t0 at its end, outcome)."""
    import socket
    import ssl

    ctx = support.client_context(world.pki, world.device)
    while time.monotonic() < stop:
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        except OSError:
            time.sleep(0.02)
            continue
        opened = time.monotonic() - t0
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(support.connect_packet("start-probe", keep_alive=0))
                got = support.read_exact(s, 4)
                outcome = "admitted" if got == CONNACK else f"refused ({got.hex()})"
        except ssl.SSLError as e:
            outcome = f"refused ({e.reason})"
        except (OSError, ConnectionError, EOFError) as e:
            outcome = f"closed ({type(e).__name__})"
        out.append((opened, time.monotonic() - t0, outcome))
        if outcome == "admitted":
            return
        time.sleep(0.05)


def start(args: argparse.Namespace) -> None:
    """A gateway started with a large CRL on its CA endpoint, devices connecting from the
    first moment: when does the port accept, when is the first device admitted, is any
    refused meanwhile? From the network (an empty cache directory), then again from what
    crl_cache.dir kept; one process and workers = auto."""
    import threading

    from gateway.testing.crl import CrlHttpServer, big_crl_der

    world = World(args.key)
    http = CrlHttpServer()
    big = big_crl_der(world.pki.inter, args.entries)
    if args.pem:  # (as many CAs publish it: base64 lines, a third larger)
        body = base64.encodebytes(big).replace(b"\n", b"")
        lines = b"\n".join(body[i : i + 64] for i in range(0, len(body), 64))
        big = b"-----BEGIN X509 CRL-----\n" + lines + b"\n-----END X509 CRL-----\n"
    http.serve("/big.crl", 200, big)
    http.serve("/root.crl", 200, big_crl_der(world.pki.root, 1))
    broker, plain = support.start_mosquitto(world.dir)
    rows = []
    try:
        for r in range(args.rounds):
            for mode, extra in (
                ("one process", "workers = 1\n"),
                ("workers = auto", "workers = auto\n"),
            ):
                cache = tempfile.mkdtemp(prefix="crlcache-", dir=world.dir)
                for source in ("network", "cache"):
                    port = support.free_port()
                    name = f"start-{r}-{'w' if 'auto' in extra else '1'}"  # a cache per mode
                    conf = support.listener_conf(name, port, plain, world.pki) + NO_LIMITS
                    conf += extra + (
                        f"crl_cache.dir = {cache}\n"
                        f"listener.ssl.{name}.enable_crl_cache = true\n"
                        f"listener.ssl.{name}.crl_cache_urls = "
                        f"{http.url('/big.crl')},{http.url('/root.crl')}\n"
                        f"listener.ssl.{name}.crl_cache_max_size = 64MB\n"
                    )
                    results: list[list[tuple[float, float, str]]] = [
                        [] for _ in range(args.devices)
                    ]
                    t0 = time.monotonic()
                    stop = t0 + 60
                    probes = [
                        threading.Thread(target=_probe, args=(port, world, stop, out, t0))
                        for out in results
                    ]
                    for t in probes:
                        t.start()
                    gw = support.start_gateway(world.dir, conf, f"{name}-{source}", ready="mqttgw")
                    try:
                        for t in probes:
                            t.join()
                    finally:
                        gw.stop()
                    attempts = [a for out in results for a in out]
                    opened = min((a[0] for a in attempts), default=float("nan"))
                    admitted = [a[1] for a in attempts if a[2] == "admitted"]
                    refused = [a for a in attempts if a[2] != "admitted"]
                    first = min(admitted, default=float("nan")) - opened
                    last = max(admitted, default=float("nan")) - opened
                    rows.append((mode, source, opened, first, last, len(admitted), refused))
                    print(
                        f"  round {r + 1} {mode}, CRL from the {source}: port open after "
                        f"{opened:.2f}s; first device admitted {first:.2f}s later, last "
                        f"{last:.2f}s; {len(admitted)}/{args.devices} admitted; "
                        f"{len(refused)} refused" + (f" ({refused[0][2]}, ...)" if refused else "")
                    )
    finally:
        broker.stop()
        http.stop()
    print(
        f"\nA {args.entries}-entry CRL ({'PEM' if args.pem else 'DER'}, {len(big) >> 20} MiB, "
        f"16-byte serials), {args.devices} devices connecting from before the "
        "port opens; seconds from the port opening (the first TCP connection accepted by "
        "the kernel) to the first and last device admitted:"
    )
    for mode in ("one process", "workers = auto"):
        for source in ("network", "cache"):
            mine = [row for row in rows if row[0] == mode and row[1] == source]
            firsts = [row[3] for row in mine]
            refused = sum(len(row[6]) for row in mine)
            print(
                f"  {mode:15} from the {source:8}: first admitted "
                f"{statistics.median(firsts):.2f}s (range {min(firsts):.2f}-{max(firsts):.2f}), "
                f"refused {refused}"
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--baseline",
        metavar="DIR",
        help="another checkout of mqttgw (git worktree add DIR REV): its gateways run beside "
        "this tree's in every round, as NAME@base",
    )
    common.add_argument(
        "--key",
        choices=("ec", "rsa"),
        default="ec",
        help="the PKI's keys: ECDSA P-256 or RSA 2048 (server, CAs and devices alike)",
    )
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("handshakes", parents=[common])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument(
        "--crl-entries",
        type=int,
        default=1000,
        help="entries of the devices CA's CRL every target checks (0: no CRL checking)",
    )
    p = sub.add_parser("efficiency", parents=[common])
    p.add_argument(
        "--resume",
        action="store_true",
        help="each connection offers its last TLS session (resumed handshakes)",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--crl-entries", type=int, default=1000)
    p = sub.add_parser("relay", parents=[common])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--messages", type=int, default=50_000)
    p.add_argument("--publishers", type=int, default=4)
    p.add_argument(
        "--limits",
        action="store_true",
        help="one process with messages_rate and bytes_rate on (never reached), and with a "
        "100-line acl_file too, beside one without (gw-limits, gw-policy / gw-1)",
    )
    p = sub.add_parser("idle", parents=[common])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--count", type=int, nargs="+", default=[2000])
    p = sub.add_parser("crl", parents=[common])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--entries", type=int, default=1_000_000)
    p.add_argument("--seconds", type=float, default=8)
    p = sub.add_parser("start", parents=[common])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--entries", type=int, default=1_000_000)
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--pem", action="store_true", help="the big CRL as PEM (else DER)")
    p = sub.add_parser("storm", parents=[common])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--devices", type=int, default=300)
    args = parser.parse_args()
    commands = {
        "handshakes": handshakes,
        "efficiency": efficiency,
        "relay": relay,
        "idle": idle,
        "crl": crl,
        "storm": storm,
        "start": start,
    }
    commands[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
