"""The signals a serving process answers: SIGHUP reloads, SIGTERM stops cleanly."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any


def install(reactor: Any, reload: Callable[[str], object]) -> None:
    """SIGHUP reloads (``reload("SIGHUP")`` in the reactor's thread); SIGTERM stops the
    reactor, which runs the graceful drain, and twistd exits 0. Twisted's own handler makes
    twistd end by re-raising the signal, which service managers read as a failure."""
    if threading.current_thread() is not threading.main_thread():
        return
    if getattr(reactor, "running", False):

        def on_term(signum: int, frame: Any) -> None:
            reactor.callFromThread(reactor.stop)

        signal.signal(signal.SIGTERM, on_term)

    def on_hup(signum: int, frame: Any) -> None:
        reactor.callFromThread(reload, "SIGHUP")

    signal.signal(signal.SIGHUP, on_hup)
