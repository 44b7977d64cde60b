"""``mqttgw demo``: a throwaway CA, a local mosquitto, and the gateway in front of it, with
its admin listener (status page, /metrics) on loopback.

Everything binds 127.0.0.1. The files (CA, certificates, keys, configuration) are written to
a fresh directory that is printed, so that a newcomer can copy the commands shown; they are
removed when the demo stops (``--keep`` keeps them). Every printed command works as printed
while the demo runs (the gateway's own commands by their full path in this Python's
environment).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, NamedTuple

from gateway.demo import pki


class DemoPorts(NamedTuple):
    """The loopback ports the demo uses, each picked free at start."""

    gateway: int  # the demo's mutual-TLS listener
    broker: int  # mosquitto, plain MQTT
    ca: int  # the demo CA's CRLs and OCSP responder
    admin: int  # status page, /metrics, the browser page
    twistd: int  # the same gateway under twistd
    web: int  # the wss listener for browsers


def _quiet_site(root: Any) -> Any:
    from twisted.web import server

    class QuietSite(server.Site):
        """The demo CA's web server: no access log (a line per CRL fetch would bury the
        lines the demo asks you to watch)."""

        noisy = False

        def log(self, request: Any) -> None:
            pass

    return QuietSite(root)


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port on 127.0.0.1")


def _mosquitto() -> str:
    path = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(path):
        raise SystemExit("mqttgw demo: mosquitto is not installed (apt-get install mosquitto)")
    return path


def write_demo_files(directory: str, ports: DemoPorts) -> tuple[dict[str, str], pki.Issued]:
    port, broker_port, ca_port, admin_port, twistd_port, web_port = ports
    root = pki.make_ca("mqttgw demo root CA")
    devices = pki.make_ca("mqttgw demo devices CA", issuer=root)
    files = {"ca": pki.write_ca_bundle(os.path.join(directory, "ca.pem"), root, devices)}
    # The server certificate names the demo CA's OCSP responder (AIA): stapling needs no URL.
    server = pki.issue(
        devices, "localhost", server=True, ocsp_url=f"http://127.0.0.1:{ca_port}/ocsp"
    )
    files["server_cert"], files["server_key"] = server.write(directory, "server")
    for name in ("device-1", "device-2", "device-revoked"):
        files[f"{name}_cert"], files[f"{name}_key"] = pki.issue(devices, name).write(
            directory, name
        )
    stranger = pki.make_ca("not the demo CA")
    files["stranger_cert"], files["stranger_key"] = pki.issue(stranger, "intruder").write(
        directory, "intruder"
    )
    # The devices CA keeps its database for `openssl ca`; its CRL is served on loopback.
    ca = pki.OpensslCA.create(os.path.join(directory, "ca"), devices)
    ca.register(files["server_cert"])
    ca.revoke(files["device-revoked_cert"])
    files["ca_index"] = os.path.join(ca.dir, "index.txt")
    files["crl"] = os.path.join(ca.dir, "devices.crl.pem")
    with open(files["crl"], "wb") as f:
        f.write(ca.gencrl("devices.crl.pem"))
    files["ca_config"] = ca.config
    # The root publishes a CRL too: every certificate below the trust anchor is checked,
    # the devices CA's own certificate included.
    root_ca = pki.OpensslCA.create(os.path.join(directory, "root-ca"), root)
    files["root_crl"] = os.path.join(root_ca.dir, "root.crl.pem")
    with open(files["root_crl"], "wb") as f:
        f.write(root_ca.gencrl("root.crl.pem"))

    def conf(listener_port: int, admin: str, web: str) -> str:
        return (
            "# Written by 'mqttgw demo'. See docs/configuration.md for every key.\n"
            f"upstream = 127.0.0.1:{broker_port}\n"
            "crl_cache.refresh_interval = 10s\n"
            # The status page, /status, /metrics and /ready, read-only without a token
            # (a loopback address: POST /reload and /refresh need admin.token_file).
            f"admin.listen = {admin}\n"
            # A line when a device gets in, as well as when its session ends.
            "log_connect = true\n"
            # One process, easy to follow (auto runs one per CPU).
            "workers = 1\n"
            f"listener.ssl.demo = 127.0.0.1:{listener_port}\n"
            "listener.ssl.demo.keyfile = server.key\n"
            "listener.ssl.demo.certfile = server.pem\n"
            "listener.ssl.demo.cacertfile = ca.pem\n"
            "listener.ssl.demo.verify = verify_peer\n"
            "listener.ssl.demo.fail_if_no_peer_cert = true\n"
            "listener.ssl.demo.enable_crl_cache = true\n"
            f"listener.ssl.demo.crl_cache_urls = http://127.0.0.1:{ca_port}/devices.crl.pem, "
            f"http://127.0.0.1:{ca_port}/root.crl.pem\n"
            "listener.ssl.demo.enable_ocsp_stapling = true\n" + web
            # MQTT over WebSocket for browsers: TLS, no client certificate.
        )

    browsers = (
        f"listener.wss.web = 127.0.0.1:{web_port}\n"
        "listener.wss.web.keyfile = server.key\n"
        "listener.wss.web.certfile = server.pem\n"
        "listener.wss.web.verify = verify_none\n"
    )

    # The demo's gateway, and the same for twistd on a port of its own (beside the demo's).
    broker = f"listener {broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
    for key, filename, text in (
        ("conf", "mqttgw.conf", conf(port, f"127.0.0.1:{admin_port}", browsers)),
        ("twistd_conf", "twistd.conf", conf(twistd_port, "", "")),
        ("mosquitto_conf", "mosquitto.conf", broker),
    ):
        files[key] = os.path.join(directory, filename)
        with open(files[key], "w", encoding="utf-8") as out:
            out.write(text)
    return files, devices


def instructions(directory: str, ports: DemoPorts, files: dict[str, str], keep: bool) -> str:
    port, broker_port, ca_port, admin_port, twistd_port, web_port = ports
    tls = f"-h localhost -p {port} --cafile {files['ca']}"
    bindir = os.path.dirname(sys.executable)  # mqttgw and twistd, beside this Python
    admin = f"http://127.0.0.1:{admin_port}"

    def device(name: str) -> str:
        return f"--cert {files[name + '_cert']} --key {files[name + '_key']}"

    s_client = (
        f"openssl s_client -connect localhost:{port} -status -CAfile {files['ca']} "
        f"-cert {files['device-1_cert']} -key {files['device-1_key']} </dev/null"
    )
    ca = f"openssl ca -config {files['ca_config']}"
    revoke = f"{ca} -revoke {files['device-2_cert']} && {ca} -gencrl -out {files['crl']}"

    return f"""
mqttgw demo: files in {directory}
  gateway   127.0.0.1:{port}  (mutual TLS; device certificates from the demo CA)
  mosquitto 127.0.0.1:{broker_port}  (plain MQTT, reached only through the gateway)
  demo CA   http://127.0.0.1:{ca_port}/devices.crl.pem  (its CRL, refreshed every 10s)
            http://127.0.0.1:{ca_port}/ocsp  (its OCSP responder)

In another terminal, subscribe through the gateway:
  mosquitto_sub {tls} {device("device-1")} -t 'demo/#' -v

and publish through the gateway:
  mosquitto_pub {tls} {device("device-1")} -t demo/hello -m 'hello through mqttgw'

Refused at the TLS handshake (the client only sees "connection lost"; the reason is in
the 'refused' lines of this log):
  mosquitto_pub {tls} -t demo/hello -m 'no certificate'
  mosquitto_pub {tls} {device("stranger")} -t demo/hello -m 'certificate from another CA'
  mosquitto_pub {tls} {device("device-revoked")} -t demo/hello -m 'revoked certificate'

Revoke a device while it is connected: subscribe with device-2,
  mosquitto_sub {tls} {device("device-2")} -t 'demo/#' -v
then revoke it with the CA's own tool; within 10s its session is closed and it is refused:
  {revoke}

The gateway staples the CA's OCSP answer about its own certificate (s_client then closes
without speaking MQTT, so this log says 'refused ... reason=bad_connect' for it):
  {s_client}

MQTT over WebSocket in a browser (MQTT.js through the gateway's wss listener on port
{web_port}; open https://localhost:{web_port}/ once and accept the demo certificate first):
  {admin}/demo/

What the gateway is doing (status page, Prometheus metrics, the same in a terminal):
  {admin}/
  {admin}/metrics
  {bindir}/mqttgw status --admin {admin}

The same gateway under twistd, on port {twistd_port}, in another terminal while this demo runs
(it uses this demo's CA and mosquitto; Ctrl-C stops it):
  {bindir}/twistd -n --pidfile= mqttgw -c {files["twistd_conf"]}

Ctrl-C stops the gateway and mosquitto{"" if keep else " and removes " + directory}.
"""


def run_demo(directory: str | None, port: int, keep: bool = False) -> int:
    # Files in a directory the demo made are removed at the end (they hold the demo CA's
    # private key); a directory given with --dir is left as it is, as with --keep.
    keep = keep or directory is not None
    directory = directory or tempfile.mkdtemp(prefix="mqttgw-demo-")
    os.makedirs(directory, exist_ok=True)
    port = _free_port(port)
    ports = DemoPorts(
        gateway=port,
        broker=_free_port(0),
        ca=_free_port(0),
        admin=_free_port(9180),
        twistd=_free_port(port + 1),
        web=_free_port(8084),
    )
    try:
        return _run(directory, ports, keep)
    finally:
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)


def _run(directory: str, ports: DemoPorts, keep: bool) -> int:
    from twisted.internet import endpoints, reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.web import resource, static

    from gateway.demo.ocsp import DemoOcspResponder
    from gateway.prepare import prepare
    from gateway.tap import make_gateway_service

    files, devices_ca = write_demo_files(directory, ports)
    broker = subprocess.Popen(
        [_mosquitto(), "-c", files["mosquitto_conf"]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", ports.broker), timeout=0.2).close()
                break
            except OSError:
                if broker.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("mqttgw demo: mosquitto did not start") from None
                time.sleep(0.05)
        globalLogBeginner.beginLoggingTo(
            [textFileLogObserver(sys.stdout)], redirectStandardIO=False
        )
        # The demo CA publishes its CRL and answers OCSP over HTTP, on loopback only.
        ca_root = resource.Resource()
        ca_root.putChild(b"devices.crl.pem", static.File(files["crl"]))
        ca_root.putChild(b"root.crl.pem", static.File(files["root_crl"]))
        ca_root.putChild(b"ocsp", DemoOcspResponder(devices_ca, files["ca_index"]))
        ca_site = _quiet_site(ca_root)
        ca_endpoint = endpoints.TCP4ServerEndpoint(reactor, ports.ca, interface="127.0.0.1")
        failed: list[BaseException] = []
        ca_endpoint.listen(ca_site).addErrback(lambda f: failed.append(f.value))
        if failed:  # a TCP endpoint listens at once
            raise SystemExit(
                f"demo: the demo CA cannot listen on 127.0.0.1:{ports.ca}: {failed[0]}"
            )
        gateway = make_gateway_service(prepare(files["conf"]), reactor)
        if gateway.admin_resource is not None:  # the browser page, beside the status page
            gateway.admin_resource.putChild(b"demo", _web_page(ports.web))
        gateway.privilegedStartService()
        gateway.startService()
        text = instructions(directory, ports, files, keep)
        reactor.callWhenRunning(lambda: print(text, flush=True))
        reactor.addSystemEventTrigger("before", "shutdown", gateway.stopService)
        reactor.run()
    finally:
        broker.terminate()
        broker.wait(10)
    return 0


def _web_page(web_port: int) -> Any:
    """/demo/ of the admin listener: the browser page and MQTT.js beside it."""
    from twisted.web import resource, static

    from gateway.demo.webpage import mqtt_js, page

    demo = resource.Resource()
    html = static.Data(page(f"wss://localhost:{web_port}/mqtt"), "text/html; charset=utf-8")
    demo.putChild(b"", html)
    demo.putChild(b"index.html", html)
    bundle = mqtt_js()
    if bundle is not None:
        demo.putChild(b"mqtt.min.js", static.File(bundle, defaultType="text/javascript"))
    return demo
