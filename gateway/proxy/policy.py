"""The Twisted adapter of the MQTT policy edge (``gateway.mqtt.policy``, sans-IO).

Only for listeners with ``messages_rate``/``bytes_rate`` or an ``acl_file``: the relay's
short path is untouched otherwise. ``DevicePolicy`` sits between the device's transport and
the broker connection: it feeds the core the bytes of both directions and the time, and
carries out what it returns (bytes to either side, a timer while a PUBLISH waits for its
tokens, the end of the session). It is the producer the broker's transport pauses and
resumes (flow control), and it pauses the device itself while a PUBLISH waits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import attrs
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from zope.interface import implementer

from gateway.mqtt import MQTT_5, RemoteProtocolError
from gateway.mqtt.packets import Boundaries, disconnect
from gateway.mqtt.policy import (
    PASS,
    Action,
    Denied,
    End,
    Forward,
    PolicyEdge,
    ResumeDevice,
    ToDevice,
    Told,
    WaitUntil,
    Who,
    closing_reason,
)
from gateway.proxy.contracts import ClientHome
from gateway.reasons import Reason


class DeviceTransport(Protocol):
    """What the policy needs of the device's transport."""

    def write(self, data: bytes | memoryview) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def stopProducing(self) -> None: ...


class PolicyCounts(Protocol):
    """The listener's counters the policy adds to (``status.ListenerStats``)."""

    throttled: int
    throttled_seconds: float
    acl_denied: Any  # Counter by "<what> <rule>"
    disconnects_sent: Any  # Counter by reason code


@attrs.frozen
class PolicyHooks:
    """What the policy of one session calls on the relay."""

    forward: Callable[[bytes | memoryview], None]  # bytes to the broker
    end: Callable[[Reason, str], None]  # the session is to be ended, and why
    denied: Callable[[str, str, str], None]  # (what, topic, rule), for the log


def policy_for(
    home: ClientHome, device: DeviceTransport, who: Who, protocol_level: int, hooks: PolicyHooks
) -> DevicePolicy | None:
    """The policy edge of a session about to relay, on a listener with per-device limits or
    topic rules (None: the relay's short path). The rules are read from ``home`` for each
    packet, so a reload applies to live sessions."""
    tenant = who.tenant
    limits = home.device_limits_for(tenant)
    if limits is None and home.acl_for(tenant) is None:
        return None
    edge = PolicyEdge(
        limits,
        lambda: home.acl_for(tenant),
        who,
        protocol_level,
        home.session_limits.max_packet_size,
        home.reactor.seconds(),
        home.acl_deny_action,
        home.acl_read_mode,
    )
    return DevicePolicy(
        edge, device, hooks.forward, hooks.end, home.reactor, home.stats, hooks.denied
    )


@implementer(IPushProducer)
class DevicePolicy:
    """Carries out one session's ``PolicyEdge``."""

    def __init__(
        self,
        edge: PolicyEdge,
        device: DeviceTransport,
        forward: Callable[[bytes | memoryview], None],
        end: Callable[[Reason, str], None],  # the session is to be ended, and why
        reactor: Any,  # IReactorTime
        stats: PolicyCounts | None = None,
        on_denied: Callable[[str, str, str], None] = lambda what, topic, rule: None,
    ) -> None:
        self.edge = edge
        self.device = device
        self.forward = forward
        self.end = end
        self.reactor = reactor
        self.stats = stats
        self.on_denied = on_denied
        self._timer: IDelayedCall | None = None
        self._flow_paused = False  # the broker's transport asked for a pause
        # Looked up once: every message of the session goes through these.
        self._from_device = edge.from_device
        self._from_broker = edge.from_broker
        self._seconds = reactor.seconds if edge.timed else None

    def feed(self, data: bytes) -> None:
        """Bytes from the device."""
        seconds = self._seconds
        actions = self._from_device(data, seconds() if seconds is not None else 0.0)
        if actions is PASS:
            self.forward(data)
        else:
            self._run(actions)

    def from_broker(self, data: bytes) -> None:
        """Bytes from the broker, for the device."""
        actions = self._from_broker(data)
        if actions is PASS:
            self.device.write(data)
        else:
            self._run(actions)

    def close(self, by: Reason, server_reference: str | None = None) -> None:
        """The gateway is closing the session (revoked, shutdown, reload): MQTT 5 devices
        are told why first."""
        self.stop()
        self._run(self.edge.close(by, server_reference))

    def stop(self) -> None:
        """The session ended: drop the timer."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _release(self) -> None:
        self._timer = None
        self._run(self.edge.release(self.reactor.seconds()))

    def _run(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Forward):
                self.forward(action.data)
            elif isinstance(action, ToDevice):
                self.device.write(action.data)
            else:
                _HANDLERS[type(action)](self, action)

    def _wait(self, action: WaitUntil) -> None:
        if self.stats is not None:
            self.stats.throttled += 1
            self.stats.throttled_seconds += action.seconds
        self.stop()
        self._timer = self.reactor.callLater(action.seconds, self._release)
        self.device.pauseProducing()

    def _resume(self, action: ResumeDevice) -> None:
        if not self._flow_paused:
            self.device.resumeProducing()

    def _end(self, action: End) -> None:
        self.stop()
        self.end(action.reason, action.detail)

    def _denied(self, action: Denied) -> None:
        if self.stats is not None:
            self.stats.acl_denied[f"{action.what} {action.rule}"] += 1
        self.on_denied(action.what, action.topic, action.rule)

    def _told(self, action: Told) -> None:
        if self.stats is not None:
            self.stats.disconnects_sent[f"0x{action.code:02X}"] += 1

    # -- IPushProducer, for the broker's transport (flow control) -------------------------

    def pauseProducing(self) -> None:
        self._flow_paused = True
        self.device.pauseProducing()

    def resumeProducing(self) -> None:
        self._flow_paused = False
        if not self.edge.held and not self.edge.ended:
            self.device.resumeProducing()

    def stopProducing(self) -> None:
        self.device.stopProducing()


_HANDLERS: dict[type, Callable[[DevicePolicy, Any], None]] = {
    WaitUntil: DevicePolicy._wait,
    ResumeDevice: DevicePolicy._resume,
    End: DevicePolicy._end,
    Denied: DevicePolicy._denied,
    Told: DevicePolicy._told,
}


class BrokerFollower:
    """An MQTT 5 session on the short path (no policy edge): follows where the broker's
    packets end, so that a close of the gateway's own can tell the device why between two
    of them, as the policy edge does (inside one, which is rare, the device is closed
    without it: a packet cannot be cut)."""

    __slots__ = ("boundaries", "device")

    def __init__(self, device: Any) -> None:
        self.device = device  # what the device is written to (the transport, or its link)
        self.boundaries: Boundaries | None = Boundaries()

    def feed(self, data: bytes) -> None:
        """The broker's bytes, as they go to the device."""
        if self.boundaries is not None:
            try:
                self.boundaries.feed(data)
            except RemoteProtocolError:  # not MQTT: no boundary is known from here on
                self.boundaries = None

    def close(self, by: Reason, server_reference: str | None = None) -> None:
        if self.boundaries is not None and self.boundaries.between:
            told = closing_reason(by, server_reference)
            if told is not None:
                self.device.write(disconnect(MQTT_5, *told))


def follows(protocol_level: int, device: Any) -> BrokerFollower | None:
    """An MQTT 5 session on the short path follows the broker's packets; others do not."""
    return BrokerFollower(device) if protocol_level == MQTT_5 else None
