"""systemd's readiness protocol (sd_notify): READY=1 once every listener accepts,
RELOADING=1 / READY=1 around a reload, STOPPING=1 at stop. A no-op unless systemd set
NOTIFY_SOCKET (a unit with Type=notify). One non-blocking datagram per state change."""

from __future__ import annotations

import os
import socket

from twisted.logger import Logger

log = Logger()


def notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. "READY=1") to systemd; False if there is no socket to send to."""
    path = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(state.encode(), path)
        return True
    except OSError as e:
        log.warn("sd_notify {state} failed: {error}", state=state, error=e.strerror or str(e))
        return False
