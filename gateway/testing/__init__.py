"""Test and benchmark helpers, shipped with the package as Twisted ships its own: real
components (mosquitto, the gateway under twistd, clients) and in-process stand-ins (the CRL
worker run inline). Nothing in the gateway itself imports this.

Everything binds 127.0.0.1 on free ports and is stopped by whoever started it.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from typing import Any

import attrs
from twisted.internet import defer
from twisted.logger import eventsFromJSONLogFile, jsonFileLogObserver, textFileLogObserver

from gateway.config.load import parse_config
from gateway.demo import pki
from gateway.mqtt.packets import connect_packet as connect_packet
from gateway.mqtt.packets import encode_length as encode_length
from gateway.prepare import Prepared, prepare_config
from gateway.proxy import proxyproto
from gateway.revocation import worker
from gateway.revocation.crl import CrlError, LoadedCrl, decode_answer

BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    # The kernel may hand the same free port out twice in a row (nothing holds it between
    # the calls): never give a test a port this process gave out before.
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port
    return port


_GIVEN: set[int] = set()


def wait_until(
    predicate: Any, timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or predicate}")
        time.sleep(interval)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# What systemd does between fork and exec for a socket-activated service: the socket at
# descriptor 3, LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID (this process's: exec keeps it).
_ACTIVATE = (
    "import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); fd != 3 and os.close(fd); "
    "os.environ.update(LISTEN_FDS='1', LISTEN_FDNAMES='mqttgw.socket', "
    "LISTEN_PID=str(os.getpid())); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


@attrs.define
class Process:
    proc: subprocess.Popen[bytes]
    log_path: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def events(self) -> list[dict[str, Any]]:
        """The stats lines as structured events (with ``start_gateway(stats_json=True)``)."""
        with open(self.log_path + ".json", encoding="utf-8") as f:
            return list(eventsFromJSONLogFile(f))

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        return wait_until(lambda: text in self.log() and self.log(), timeout, what=repr(text))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def mosquitto_path() -> str:
    path = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(path):
        raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
    return path


def mosquitto_mtls_listener(port: int, p: Pki, protocol: str = "mqtt") -> str:
    """Lines for a mosquitto listener (``extra`` of ``start_mosquitto``) on 127.0.0.1:``port``
    that wants a client certificate from ``p``'s CA: the baseline the benchmarks compare
    the gateway with. ``protocol`` is mosquitto's: mqtt or websockets."""
    return (
        f"listener {port} 127.0.0.1\nprotocol {protocol}\ncafile {p.ca_file}\n"
        f"certfile {p.server_cert}\nkeyfile {p.server_key}\nrequire_certificate true\n"
        "max_connections -1\n"
    )


def start_mosquitto(
    directory: str, port: int | None = None, extra: str = ""
) -> tuple[Process, int]:
    port = port or free_port()
    conf = os.path.join(directory, f"mosquitto-{port}.conf")
    log_path = os.path.join(directory, f"mosquitto-{port}.log")
    with open(conf, "w") as f:
        f.write(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            # Started as root, mosquitto would switch to user 'mosquitto' and lose access to
            # the test's private directory.
            f"user {getpass.getuser()}\n"
            f"max_queued_messages 0\nmax_queued_bytes 0\nlog_dest file {log_path}\n" + extra
        )
    open(log_path, "wb").close()
    proc = subprocess.Popen(
        [mosquitto_path(), "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    process = Process(proc, log_path)
    try:
        wait_until(lambda: port_open(port) or proc.poll() is not None, what="mosquitto")
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {process.log()}")
    except BaseException:
        process.stop()
        raise
    return process, port


def dual_log_observer() -> Any:
    """For ``twistd --logger``: the classic text log at $MQTTGW_TEST_LOG, and the stats lines
    as JSON at the same path plus ``.json``, so that benchmarks read structured fields
    (``max_reactor_lag_ms``) instead of parsing text. Only the monitor's events go to JSON:
    serialising every connection's log lines would cost the measured process real CPU."""
    path = os.environ["MQTTGW_TEST_LOG"]
    text = textFileLogObserver(open(path, "a", encoding="utf-8"))  # noqa: SIM115
    as_json = jsonFileLogObserver(open(path + ".json", "a", encoding="utf-8"))  # noqa: SIM115

    def observe(event: dict[str, Any]) -> None:
        text(event)
        if event.get("log_namespace") == "gateway.monitor":
            as_json(event)

    return observe


def start_gateway(
    directory: str,
    conf_text: str,
    name: str = "gateway",
    ready: str = "listener ",
    stats_json: bool = False,
    extra_args: list[str] | None = None,
    plugin_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    activate: socket.socket | None = None,
) -> Process:
    """twistd mqttgw on ``conf_text``, logging to ``NAME.log`` (and with ``stats_json`` the
    stats lines to ``NAME.log.json``, read by ``Process.events``). ``activate``: a listening
    socket passed as systemd's socket activation passes it (descriptor 3, LISTEN_FDS=1,
    LISTEN_PID the gateway's)."""
    conf = os.path.join(directory, f"{name}.conf")
    log_path = os.path.join(directory, f"{name}.log")
    if "log_connect" not in conf_text and os.environ.get("MQTTGW_TEST_LOG_CONNECT"):
        # The tests wait on a session's accept line (tests/conftest.py sets this); the
        # product's default is one line per session, at its end.
        conf_text += "log_connect = true\n"
    if "watch_files" not in conf_text:
        # Tests write files and reload when they mean to (the watcher has its own test).
        conf_text += "watch_files = false\n"
    if "shutdown_drain" not in conf_text:
        # Tests stop gateways with clients still connected: a short drain keeps them fast
        # (the drain itself is tested with its own value).
        conf_text += "shutdown_drain = 200ms\n"
    with open(conf, "w") as f:
        f.write(conf_text)
    cmd = [
        os.path.join(BIN, "twistd"),
        "-n",
        "--pidfile=",
        "--logger=gateway.testing.dual_log_observer" if stats_json else f"--logfile={log_path}",
        *(extra_args or []),
        "mqttgw",
        "--config",
        conf,
        *(plugin_args or []),
    ]
    passed: tuple[int, ...] = ()
    if activate is not None:
        passed = (activate.fileno(),)
        cmd = [sys.executable, "-c", _ACTIVATE, str(passed[0]), *cmd]
    open(log_path, "w").close()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=directory,
        env=dict(os.environ, MQTTGW_TEST_LOG=log_path, **(env or {})),
        pass_fds=passed,
    )
    process = Process(proc, log_path)
    try:
        wait_until(
            lambda: ready in process.log() or proc.poll() is not None, 20, what="gateway start"
        )
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise RuntimeError(f"gateway exited {proc.returncode}: {out}\n{process.log()}")
    except BaseException:
        process.stop()
        raise
    return process


@attrs.define
class Pki:
    """A root CA, an intermediate, a server certificate and device certificates on disk."""

    dir: str
    root: pki.Issued
    inter: pki.Issued
    ca_file: str
    server_cert: str
    server_key: str

    def client(self, name: str, **kwargs: Any) -> tuple[str, str]:
        issuer = kwargs.pop("issuer", self.inter)
        return pki.issue(issuer, name, **kwargs).write(self.dir, name)


def make_pki(directory: str, key_kind: str = "ec") -> Pki:
    root = pki.make_ca("mqttgw test root CA", key_kind=key_kind)
    inter = pki.make_ca("mqttgw test devices CA", key_kind=key_kind, issuer=root)
    ca_file = pki.write_ca_bundle(os.path.join(directory, "ca.pem"), root, inter)
    server_cert, server_key = pki.issue(inter, "localhost", server=True, key_kind=key_kind).write(
        directory, f"server-{key_kind}"
    )
    return Pki(directory, root, inter, ca_file, server_cert, server_key)


def listener_conf(
    name: str,
    port: int,
    upstream_port: int,
    p: Pki,
    extra: dict[str, str] | None = None,
    family: str = "ssl",
) -> str:
    lines = {"": f"127.0.0.1:{port}"}
    if family != "ws":  # (a ws listener has no TLS)
        lines |= {"keyfile": p.server_key, "certfile": p.server_cert, "cacertfile": p.ca_file}
    lines["upstream"] = f"127.0.0.1:{upstream_port}"
    lines.update(extra or {})
    prefix = f"listener.{family}.{name}"
    return "".join(f"{prefix}{'.' + k if k else ''} = {v}\n" for k, v in lines.items())


def client_context(p: Pki, cert: tuple[str, str] | None, tls: str = "1.3") -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=p.ca_file)
    version = ssl.TLSVersion.TLSv1_3 if tls == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.minimum_version = ctx.maximum_version = version
    if cert:
        ctx.load_cert_chain(*cert)
    return ctx


def tls_connect(port: int, ctx: ssl.SSLContext, timeout: float = 5.0) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def publish_packet(topic: str, payload: bytes, retain: bool = False) -> bytes:
    """A QoS 0 PUBLISH."""
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + payload
    return bytes((0x30 | (1 if retain else 0),)) + encode_length(len(body)) + body


def read_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def s_client(
    port: int, ca_file: str, cert: tuple[str, str], tls: str = "1.3", *extra: str
) -> subprocess.CompletedProcess[str]:
    """`openssl s_client` with a client certificate, stdin closed."""
    version = "-tls1_3" if tls == "1.3" else "-tls1_2"
    args = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", ca_file]
    return run([*args, "-cert", cert[0], "-key", cert[1], version, *extra], input="")


def run(cmd: list[str], timeout: float = 20, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


@attrs.define
class InlineProcessor:
    """The CRL worker's work in this process: for deterministic unit tests only."""

    def process(
        self, header: bytes, body: list[bytes], max_output: int
    ) -> defer.Deferred[list[LoadedCrl]]:
        import io

        out = io.BytesIO()
        worker.main(io.BytesIO(header + b"".join(body)), out)
        try:
            return defer.succeed(decode_answer(out.getvalue()))
        except CrlError as e:
            return defer.fail(e)


def prepare_text(text: str, path: str = "<config>") -> Prepared:
    """``gateway.prepare.prepare`` for configuration text (tests, benchmarks)."""
    return prepare_config(parse_config(text, path))


def parse_ssl_tlv(value: bytes) -> dict[str, object]:
    """PP2_TYPE_SSL's content as a test reads it: client flags, verify, sub-TLVs."""
    client, verify = struct.unpack("!BI", value[:5])
    subs = dict(proxyproto.parse_tlvs(value[5:]))
    return {
        "client": client,
        "verify": verify,
        "version": subs.get(proxyproto.PP2_SUBTYPE_SSL_VERSION, b"").decode(),
        "cipher": subs.get(proxyproto.PP2_SUBTYPE_SSL_CIPHER, b"").decode(),
        "cn": (
            subs[proxyproto.PP2_SUBTYPE_SSL_CN].decode()
            if proxyproto.PP2_SUBTYPE_SSL_CN in subs
            else None
        ),
    }
