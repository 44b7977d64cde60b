"""One device's relayed stream paced to its limits (``messages_rate``, ``bytes_rate``).

Only for listeners with limits: the relay's short path is untouched otherwise. The device's
bytes are cut into packets (``mqtt.stream``); a PUBLISH takes its tokens (``mqtt.limits``);
when a bucket is short, that PUBLISH and whatever follows it are held, and the device is
not read from (TCP backpressure, as EMQX does) until the wait is over. Nothing is dropped;
other devices are not slowed. The broker's flow control (its write buffer full) pauses the
device as before: the device is read from only when neither wants it paused.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from gateway.mqtt.errors import RemoteProtocolError
from gateway.mqtt.limits import DeviceLimits, pause_for
from gateway.mqtt.stream import PUBLISH, Packet, StreamReader


@implementer(IPushProducer)
class Pacer:
    """Between a device's TLS transport and the broker connection. It is the producer the
    broker's transport pauses and resumes (flow control), and it pauses the device itself
    while a PUBLISH waits for its tokens."""

    def __init__(
        self,
        device: Any,  # the device's transport: pauseProducing / resumeProducing
        forward: Callable[[bytes], None],
        refuse: Callable[[str], None],
        limits: DeviceLimits,
        protocol_level: int,
        max_packet_size: int,
        reactor: Any,
        stats: Any = None,  # the listener's ListenerStats: throttled, throttled_seconds
    ) -> None:
        self.device = device
        self.forward = forward
        self.refuse = refuse  # a packet the reader refused: the session is to be ended
        self.reactor = reactor
        self.reader = StreamReader(protocol_level, max_packet_size)
        self.buckets = limits.buckets(reactor.seconds())
        self.held: deque[Packet] = deque()
        self._timer: Any = None
        self._flow_paused = False
        self.stats = stats

    def feed(self, data: bytes) -> None:
        try:
            packets = self.reader.feed(data)
        except RemoteProtocolError as e:
            self.refuse(f"{e.kind}: {e.detail}")
            return
        if self.held:
            self.held.extend(packets)
            return
        self._send(packets)

    def _send(self, packets: list[Packet] | deque[Packet]) -> None:
        """Forward packets in order until one must wait; hold it and the rest."""
        now = self.reactor.seconds()
        out: list[memoryview] = []
        for i, packet in enumerate(packets):
            wait = pause_for(self.buckets, len(packet.raw), now) if packet.kind == PUBLISH else 0.0
            if wait > 0:
                self._flush(out)
                self.held.extend(list(packets)[i:])
                if self.stats is not None:
                    self.stats.throttled += 1
                    self.stats.throttled_seconds += wait
                self._timer = self.reactor.callLater(wait, self._release)
                self.device.pauseProducing()
                return
            out.append(packet.raw)
        self._flush(out)

    def _flush(self, out: list[memoryview]) -> None:
        if out:
            self.forward(b"".join(out))

    def _release(self) -> None:
        """The held PUBLISH has waited for its tokens (taken already): forward it, then
        the rest as the buckets allow; read from the device again once nothing is held."""
        self._timer = None
        first = self.held.popleft()
        rest = list(self.held)
        self.held.clear()
        self.forward(bytes(first.raw))
        self._send(rest)
        if not self.held and not self._flow_paused:
            self.device.resumeProducing()

    def stop(self) -> None:
        """The session ended: drop the timer (and what was held: the device is gone)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.held.clear()

    # -- IPushProducer, for the broker's transport (flow control) ---------------------------

    def pauseProducing(self) -> None:
        self._flow_paused = True
        self.device.pauseProducing()

    def resumeProducing(self) -> None:
        self._flow_paused = False
        if not self.held:
            self.device.resumeProducing()

    def stopProducing(self) -> None:
        self.device.stopProducing()
