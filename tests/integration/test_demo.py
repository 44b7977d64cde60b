"""The README's demo: it starts, prints working commands, and they work."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from gateway import testing as support
from gateway.demo import webpage

pytestmark = pytest.mark.integration


def test_demo_commands_work(workdir: str) -> None:
    """Every line the demo prints works as printed: the mosquitto_sub/pub lines reach the
    broker, the refused ones are refused, the revocation closes a live session, s_client
    shows the staple, the status page, /metrics and ``mqttgw status`` answer, the twistd
    line starts the same gateway beside it; and at the end its files (the demo CA's key
    among them) are gone."""
    port = support.free_port()
    proc = subprocess.Popen(
        [os.path.join(support.BIN, "mqttgw"), "demo", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    directory = ""
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        support.wait_until(
            lambda: "Ctrl-C stops" in "".join(lines) or proc.poll() is not None, 30, what="demo"
        )
        out = "".join(lines)
        assert proc.poll() is None, out
        commands = [
            line.strip()
            for line in out.splitlines()
            if line.strip().startswith(("mosquitto_", "openssl ca"))
        ]
        sub_cmd, pub_cmd, no_cert, intruder, revoked, sub2_cmd, revoke_cmd = commands[:7]
        sub = subprocess.Popen(
            shlex.split(sub_cmd) + ["-C", "1", "-W", "15"], stdout=subprocess.PIPE, text=True
        )
        time.sleep(1.0)
        assert subprocess.run(shlex.split(pub_cmd), timeout=15).returncode == 0
        received, _ = sub.communicate(timeout=20)
        assert received.strip() == "demo/hello hello through mqttgw"
        for cmd in (no_cert, intruder, revoked):
            assert subprocess.run(shlex.split(cmd), capture_output=True, timeout=15).returncode != 0
        # Revoke device-2 while it is subscribed: the gateway closes its session.
        sub2 = subprocess.Popen(shlex.split(sub2_cmd) + ["-W", "40"], stdout=subprocess.PIPE)
        support.wait_until(lambda: "subject=CN=device-2" in "".join(lines), 15, what="device-2")
        assert (
            subprocess.run(revoke_cmd, shell=True, capture_output=True, timeout=30).returncode == 0
        )
        support.wait_until(
            lambda: "certificate revoked by a revocation update" in "".join(lines),
            30,
            what="live revoke",
        )
        sub2.kill()
        out = "".join(lines)
        assert re.search(r"refused demo .*reason=no_certificate", out), out
        assert re.search(r"refused demo .*reason=unknown_ca", out), out
        assert re.search(r"refused demo .*reason=revoked subject=CN=device-revoked", out), out
        assert "the reason is in\nthe 'refused' lines of this log" in out
        directory = re.search(r"mqttgw demo: files in (\S+)", out).group(1)  # type: ignore[union-attr]
        # What the gateway is doing: the page, the metrics, mqttgw status, as printed.
        printed = [line.strip() for line in out.splitlines()]
        page = next(
            x
            for x in printed
            if x.startswith("http://127.0.0.1:") and x.endswith("/") and "/demo/" not in x
        )
        with urllib.request.urlopen(page, timeout=10) as r:
            assert b"<h1>mqttgw " in r.read()
        with urllib.request.urlopen(page + "metrics", timeout=10) as r:
            assert b"mqttgw_certificate_expiry_timestamp_seconds" in r.read()
        status_cmd = next(x for x in printed if " status --admin " in x)
        status = subprocess.run(shlex.split(status_cmd), capture_output=True, text=True, timeout=30)
        assert status.returncode in (0, 1) and "listener demo" in status.stdout, status.stdout
        # The same gateway under twistd, as printed, beside the demo.
        twistd_cmd = next(x for x in printed if "/twistd -n --pidfile= mqttgw -c " in x)
        twistd_port = int(re.search(r"under twistd, on port (\d+)", out).group(1))  # type: ignore[union-attr]
        twistd = subprocess.Popen(
            shlex.split(twistd_cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            pub_twistd = pub_cmd.replace(f"-p {port} ", f"-p {twistd_port} ")
            support.wait_until(
                lambda: (
                    subprocess.run(
                        shlex.split(pub_twistd), capture_output=True, timeout=15
                    ).returncode
                    == 0
                ),
                30,
                what="the twistd gateway",
            )
        finally:
            twistd.terminate()
            twistd.wait(15)
        # The browser page, in headless Chromium: MQTT.js over wss through the gateway gets a
        # retained message published by the printed mosquitto_pub line, and its own echo.
        demo_page = next(x for x in printed if x.endswith("/demo/"))
        if webpage.mqtt_js() is None:
            pytest.skip("MQTT.js is not installed in .npm/ (scripts/setup.sh needs npm)")
        retained = shlex.split(pub_cmd.replace("demo/hello", "demo/retained")) + ["-r"]
        retained[retained.index("-m") + 1] = "from mosquitto_pub"
        assert subprocess.run(retained, timeout=15).returncode == 0
        with DevTools(workdir, "--ignore-certificate-errors") as browser:
            text = browser.text_of(demo_page, "demo/browser hello from the browser", 30)
        assert "demo/retained from mosquitto_pub" in text, text
        assert "Status: connected" in text
        support.wait_until(lambda: "transport=wss" in "".join(lines), 10, what="wss session")
        # The printed s_client line shows the stapled OCSP answer.
        s_client = next(x for x in printed if x.startswith("openssl s_client "))
        shown = subprocess.run(s_client, shell=True, capture_output=True, text=True, timeout=30)
        assert "OCSP Response Status: successful" in shown.stdout, shown.stdout
        assert "Cert Status: good" in shown.stdout
    finally:
        proc.send_signal(
            signal.SIGTERM
        )  # as a service manager would; SIGINT may be ignored in a background job
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0, "".join(lines)
    assert not os.path.exists(directory), "the demo's files (its CA key) are left behind"


class DevTools:
    """Headless Chromium (Debian's package) driven over its DevTools protocol: a page is
    opened and its text read until it shows what is expected (a page whose content comes
    from a WebSocket after load, which --dump-dom would not wait for). The protocol's
    WebSocket is spoken with wsproto, the gateway's own library."""

    def __init__(self, workdir: str, *flags: str) -> None:
        browser = shutil.which("chromium") or shutil.which("chromium-browser")
        assert browser, "headless Chromium is needed (Debian package chromium; scripts/test.sh)"
        self.profile = os.path.join(workdir, "devtools-profile")
        self.proc = subprocess.Popen(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic"]
            + ["--no-first-run", "--disable-background-networking", "--disable-sync"]
            + ["--disable-component-update", f"--user-data-dir={self.profile}"]
            + ["--remote-debugging-port=0", *flags, "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def __enter__(self) -> DevTools:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def text_of(self, url: str, expected: str, timeout: float) -> str:
        active = os.path.join(self.profile, "DevToolsActivePort")
        support.wait_until(lambda: os.path.exists(active), 30, what="Chromium's DevTools port")
        port = int(open(active).read().split()[0])
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/json/new?{urllib.parse.quote(url, safe=':/')}", method="PUT"
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            target = json.loads(r.read())["webSocketDebuggerUrl"]
        path = "/" + target.split("/", 3)[3]
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        ws = WSConnection(ConnectionType.CLIENT)
        sock.sendall(ws.send(Request(host=f"127.0.0.1:{port}", target=path)))
        while not any(isinstance(e, AcceptConnection) for e in ws.events()):
            ws.receive_data(sock.recv(1 << 20))
        text, deadline, ident = "", time.monotonic() + timeout, 0
        try:
            while time.monotonic() < deadline and expected not in text:
                ident += 1
                ask = {"id": ident, "method": "Runtime.evaluate"}
                ask["params"] = {"expression": "document.body.innerText", "returnByValue": True}
                sock.sendall(ws.send(TextMessage(data=json.dumps(ask))))
                answer, partial = None, ""
                while answer is None:
                    ws.receive_data(sock.recv(1 << 20))
                    for event in ws.events():
                        if isinstance(event, TextMessage):
                            partial += event.data
                            if event.message_finished:
                                reply, partial = json.loads(partial), ""
                                if reply.get("id") == ident:
                                    answer = reply
                value = answer.get("result", {}).get("result", {}).get("value")
                text = value if isinstance(value, str) else text
                if expected not in text:
                    time.sleep(0.3)
        finally:
            sock.close()
        return text
