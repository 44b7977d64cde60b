"""The README's demo: it starts, prints working commands, and they work."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import threading
import time

import pytest

from tests import support

pytestmark = pytest.mark.integration


def test_demo_commands_work(workdir: str) -> None:
    """The demo's printed mosquitto_sub/pub lines reach the broker; the refused ones are refused."""
    port = support.free_port()
    proc = subprocess.Popen(
        [os.path.join(support.BIN, "mqttgw"), "demo", "--dir", workdir, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        support.wait_until(
            lambda: "Ctrl-C stops" in "".join(lines) or proc.poll() is not None, 30, what="demo"
        )
        out = "".join(lines)
        assert proc.poll() is None, out
        commands = [
            line.strip() for line in out.splitlines() if line.strip().startswith("mosquitto_")
        ]
        sub_cmd, pub_cmd, no_cert, intruder = commands[:4]
        sub = subprocess.Popen(
            shlex.split(sub_cmd) + ["-C", "1", "-W", "15"], stdout=subprocess.PIPE, text=True
        )
        time.sleep(1.0)
        assert subprocess.run(shlex.split(pub_cmd), timeout=15).returncode == 0
        received, _ = sub.communicate(timeout=20)
        assert received.strip() == "demo/hello hello through mqttgw"
        for cmd in (no_cert, intruder):
            assert subprocess.run(shlex.split(cmd), capture_output=True, timeout=15).returncode != 0
        time.sleep(0.5)
        out = "".join(lines)
        assert re.search(r"refused demo .*reason=no_certificate", out), out
        assert re.search(r"refused demo .*reason=unknown_ca", out), out
        assert "twistd -n mqttgw -c" in out
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0, "".join(lines)
