"""A worker's process as the master sees it: its log records (JSON on its stderr) join the
master's log, and its end starts the restart."""

from __future__ import annotations

import json
from collections.abc import Callable

from twisted.internet import protocol
from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.python.failure import Failure

log = Logger()

_LEVELS = {level.name: level for level in LogLevel.iterconstants()}


class WorkerProcess(protocol.ProcessProtocol):
    """A worker's process: its log events (JSON on its stderr) join the master's log,
    tagged with the worker's index; its end starts the restart."""

    MAX_RECORD = 1 << 20

    def __init__(self, index: int, on_ended: Callable[[Failure], None]) -> None:
        self.index = index
        self.on_ended = on_ended  # the process ended (the pool restarts it)
        self._buffer = b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self._text(data)

    def errReceived(self, data: bytes) -> None:
        """Records are RS + JSON + newline (JSON text holds no raw newline); anything else
        (a crash before the worker's logging started) is passed on line by line."""
        self._buffer += data
        buf = self._buffer
        while buf:
            if buf[:1] == b"\x1e":
                end = buf.find(b"\n")
                if end < 0:
                    if len(buf) > self.MAX_RECORD:  # not a record: pass it on, do not hoard
                        self._text(buf)
                        buf = b""
                    break
                self._record(buf[1:end])
                buf = buf[end + 1 :]
            else:
                end = buf.find(b"\x1e")
                if end < 0:
                    end = buf.rfind(b"\n") + 1
                    if end == 0 and len(buf) > self.MAX_RECORD:
                        end = len(buf)
                if end == 0:
                    break
                self._text(buf[:end])
                buf = buf[end:]
        self._buffer = buf

    def _record(self, record: bytes) -> None:
        text = record.strip()
        if not text:
            return
        try:
            when, level, namespace, line = json.loads(text)
            log_level = _LEVELS[level]
        except Exception:
            self._text(record)
            return
        index = self.index
        globalLogPublisher(
            {
                "log_time": float(when),
                "log_level": log_level,
                "log_namespace": str(namespace),
                "log_system": f"worker {index}",
                # One field to format (the master re-emits every line of every worker);
                # the worker and its text stay apart for structured observers.
                "log_format": "{mqttgw_line}",
                "mqttgw_line": f"worker {index}: {line}",
                "mqttgw_worker": index,
                "mqttgw_text": str(line),
            }
        )

    def _text(self, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip():
                log.warn("worker {index}: {line}", index=self.index, line=line)

    def processEnded(self, reason: Failure) -> None:
        if self._buffer:
            self._text(self._buffer)
            self._buffer = b""
        self.on_ended(reason)
