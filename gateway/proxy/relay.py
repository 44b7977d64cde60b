"""The Twisted adapter around ``gateway.proxy.session``: ``ClientProtocol`` turns Twisted
callbacks into session events and carries out the actions the session returns (timers, the
log lines of ``session_log``, the broker connection, closes). In the relay state the bytes
take a short path (straight to the other transport) with producers registered both ways, as
in twisted.protocols.portforward, so neither side buffers without bound; with per-device
limits or topic rules they go through the policy edge (``proxy.policy``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import protocol
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.failures import plain_reason
from gateway.mqtt.policy import Who
from gateway.peer import PeerVerification
from gateway.proxy import session as S
from gateway.proxy.broker_link import UpstreamProtocol, lost_text
from gateway.proxy.contracts import ClientHome
from gateway.proxy.device_link import DeviceLink, link_for, plain_link
from gateway.proxy.handshake import (
    Identity,
    after_handshake,
    anchored_tenant,
    describe_peer_certificate,
    proxy_header,
    rewritten,
    taken_from,
    why_not_completed,
)
from gateway.proxy.holds import ask_authorization, hold_for_revocation
from gateway.proxy.policy import BrokerFollower, DevicePolicy, PolicyHooks, follows, policy_for
from gateway.proxy.session_log import SessionLog
from gateway.reasons import Reason
from gateway.tls.verify import GatewayConnection
from gateway.twisted_native import send_now

log = Logger()


@implementer(IHandshakeListener)
class ClientProtocol(protocol.Protocol):
    """The device side, running inside TLSMemoryBIOProtocol."""

    # The TLS protocol (TLSMemoryBIOProtocol): a transport, a producer and a consumer.
    transport: Any
    # With peer_cert_as_*: (user name, client id) from the certificate, or why not.
    _identity: Identity | None = None
    _cn: str | None = None  # with upstream_proxy_protocol = v2: the CN for the SSL TLV
    # With OCSP checking: (the checker, what it tracks) for this relayed session.
    _tracked: tuple[Any, tuple[Any, ...]] | None = None
    # With messages_rate / bytes_rate / acl_file: its policy edge (None: the short path).
    _policy: DevicePolicy | None = None
    # With acl_file: the certificate's identity the rules know the device by.
    _acl_user: str | None = None
    link: DeviceLink | None = None  # with MQTT over WebSocket: the device's link
    device: Any  # what the device is written to: the transport, or its link
    _follow: BrokerFollower | None = None  # MQTT 5 on the short path: the broker's packets

    def __init__(self, factory: ClientHome, addr: Any) -> None:
        self.factory = factory
        peer = f"{getattr(addr, 'host', addr)}:{getattr(addr, 'port', '')}"
        self.record = SessionLog(factory.name, peer)  # what the log says of it
        self.session = S.Session(factory.session_limits)
        self.verification = PeerVerification()  # replaced by the connection's own record
        self.upstream: UpstreamProtocol | None = None
        self.bytes_in = 0  # this session's bytes, client -> broker, after the CONNECT
        self.bytes_out = 0  # broker -> client
        self._since = 0.0  # start of the current phase: accept, broker connect, relay
        self._timer: IDelayedCall | None = None
        self._cancel_upstream: Callable[[], None] | None = None

    # -- Twisted callbacks --------------------------------------------------------------

    def connectionMade(self) -> None:
        self._since = self.factory.reactor.seconds()
        self.device = self.transport
        self.factory.stats.active += 1
        handle = self.transport.getHandle()
        if isinstance(handle, GatewayConnection):
            self.verification = handle.verification
        self._run(self.session.start())
        if self.factory.plain:  # a ws listener: no TLS, the WebSocket from the first byte
            self.link = self.device = plain_link(
                self.factory, self.transport, self.record, self._end_by
            )
            self._run(self.session.handshake_done())

    def handshakeCompleted(self) -> None:
        stats = self.factory.stats
        stats.handshake_seconds.observe(self.factory.reactor.seconds() - self._since)
        handle = self.transport.getHandle()
        record = self.record
        record.handshake(handle)  # (its version, whether it resumed, the tenant)
        leaf, self.verification.leaf = self.verification.leaf, None
        record.subject, record.serial, cert = describe_peer_certificate(handle, leaf)
        if cert is not None:  # taken now, from the certificate just parsed: no second parse
            record.tenant = record.tenant or anchored_tenant(handle, cert)  # (no name: its CA)
            self._identity, self._acl_user, self._cn = taken_from(cert, self.factory, record.tenant)
        if self.factory.websocket is not None:
            self.link = link_for(self.factory, self.transport, handle, record, self._end_by)
            self.device = self.link or self.transport
        # With CRL checking, a handshake no verify callback reported resumed a session
        # (OpenSSL verifies nothing then): its certificate is checked now, before any byte
        # can reach the broker (it may set crl_pending).
        revocation, refusal = self.factory.revocation, None
        if revocation is not None and not self.verification.chain and cert is not None:
            self.verification.tenant = record.tenant  # (its policy: no verify callback ran)
            refusal = revocation.check_resumed(cert, cert.serial_number, self.verification)
        if refusal is None:  # deny_file, the tenant's state and CAs: every handshake
            refusal = after_handshake(self.factory, handle, cert, record)
        self._run(self.session.handshake_done(self.verification.pending(), refusal))

    def dataReceived(self, data: bytes) -> None:
        link = self.link
        if link is not None:  # MQTT over WebSocket: the MQTT bytes the frames carried
            data = link.receive(data)
            if not data:
                return
        if self.session.state is S.State.RELAY:
            if self._policy is None:
                self._send_upstream(data)  # the relay's short path: what receive() would say
            else:
                self._policy.feed(data)  # a listener with limits or topic rules
        else:
            self._run(self.session.receive(data))

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self._policy is not None:
            self._policy.stop()
        if self._tracked is not None:
            checker, tracked = self._tracked
            self._tracked = None
            checker.untrack(tracked)
        self.factory.live.discard(self)
        self.factory.stats.active -= 1
        if self.factory.on_closed is not None:
            self.factory.on_closed(self)
        why_not = None
        if self.session.state is S.State.HANDSHAKE:
            why_not = why_not_completed(self.verification, self.record, reason, self.transport)
        self._run(self.session.connection_lost(lost_text(reason), why_not))

    # -- events from elsewhere -----------------------------------------------------------

    def upstream_connected(self, upstream: UpstreamProtocol) -> None:
        stats = self.factory.stats
        stats.upstream_connect_seconds.observe(self.factory.reactor.seconds() - self._since)
        self._cancel_upstream = None
        self.upstream = upstream
        self._run(self.session.upstream_connected())

    def from_broker(self, data: bytes) -> None:
        """The broker's bytes: to the device while the session relays (or is closing)."""
        if self.session.state in (S.State.RELAY, S.State.CLOSING):
            self.bytes_out += len(data)
            self.factory.stats.bytes_out += len(data)
            if self._policy is None:
                if self._follow is not None:  # MQTT 5: where the broker's packets end
                    self._follow.feed(data)
                self.device.write(data)
            else:
                self._policy.from_broker(data)  # whole packets, SUBACKs completed

    def upstream_tls(self, resumed: bool) -> None:
        stats = self.factory.stats
        stats.upstream_tls += 1
        if resumed:
            stats.upstream_tls_resumed += 1

    def upstream_failed(self, reason: Failure, broker: str | None = None) -> None:
        self.factory.stats.upstream_failures += 1
        self._cancel_upstream = None
        where = broker or self.factory.upstream_name
        detail = f"{where}: {plain_reason(reason)}"
        self._run(self.session.upstream_failed(detail))

    def stop(self, by: Reason, why: str) -> None:
        """The gateway ends this connection (shutdown, or a removed listener's drain)."""
        self._run(self.session.stop(by, why))

    def upstream_lost(self, half: bool = False, why: str = "") -> None:
        self._run(self.session.upstream_lost(half, why))

    def revoke_session(self, *by: Any) -> None:  # (Reason, why): not a revocation's
        self._run(self.session.revoked(*by))

    def _timed_out(self, what: S.Timer) -> None:
        self._timer = None
        self._run(self.session.timer_fired(what))

    def _run(self, actions: list[S.Action]) -> None:
        for action in actions:
            _HANDLERS[type(action)](self, action)

    act = _run  # (what a hold's answer is carried out with: ``proxy.holds``)

    def rename(self, username: str) -> None:
        """The hook's user name for the broker (over peer_cert_as_username's)."""
        ident = self._identity
        if not isinstance(ident, ValueError):
            self._identity = (username, ident[1] if ident is not None else None)

    # One handler per action type; _HANDLERS (after the class) maps each type to its handler.

    def _on_start_timer(self, action: S.StartTimer) -> None:
        self._cancel_timer()
        self._timer = self.factory.reactor.callLater(action.seconds, self._timed_out, action.what)

    def _on_cancel_timer(self, action: S.CancelTimer) -> None:
        self._cancel_timer()

    def _on_pause_client(self, action: S.PauseClient) -> None:
        self.transport.pauseProducing()

    def _on_open_upstream(self, action: S.OpenUpstream) -> None:
        self._since = self.factory.reactor.seconds()
        connect = self.session.connect
        client_id = connect.client_id if connect is not None else ""
        self._cancel_upstream = self.factory.connector_for(self.record.tenant)(self, client_id)

    def _on_cancel_upstream(self, action: S.CancelUpstream) -> None:
        cancel, self._cancel_upstream = self._cancel_upstream, None
        if cancel is not None:
            cancel()

    def _on_hold_for_revocation(self, action: S.HoldForRevocation) -> None:
        hold_for_revocation(self, action.pending)

    def _on_ask_authorization(self, action: S.AskAuthorization) -> None:
        ask_authorization(self)

    def _on_start_relay(self, action: S.StartRelay) -> None:
        self._start_relay(action.first)

    def _on_send_to_client(self, action: S.SendToClient) -> None:
        self.device.write(action.data)

    def _on_send_to_upstream(self, action: S.SendToUpstream) -> None:
        self._send_upstream(action.data)

    def _send_upstream(self, data: bytes | memoryview) -> None:
        upstream = self.upstream
        if upstream is not None:
            self.bytes_in += len(data)
            self.factory.stats.bytes_in += len(data)
            send_now(upstream.transport, data)

    def _on_close_client(self, action: S.CloseClient) -> None:
        self.transport.unregisterProducer()
        ended, says = self.session.ended_by, self._policy or self._follow
        if says is not None and ended is not None and isinstance(ended[0], Reason):
            if not action.abort:  # MQTT 5: the gateway's own close says why
                says.close(ended[0], self.factory.server_reference)
        by = ended[0] if ended is not None else self.session.refusal
        if self.link is not None and by is not None and not action.abort:
            self.link.close(by)  # a WebSocket's close frame says why too
        if action.abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def _on_close_upstream(self, action: S.CloseUpstream) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            if action.unhook:
                upstream.transport.unregisterProducer()
            upstream.transport.loseConnection()

    def _on_revoked_live(self, action: S.RevokedLive) -> None:
        self.factory.stats.refuse(Reason.REVOKED_LIVE)
        self.record.revoked_live()

    def _on_session_ended(self, action: S.SessionEnded) -> None:
        """The session log: one structured line per relayed session, written when it ends
        (HAProxy's tcplog): what the accept line would say, then duration, bytes, who
        closed it and how."""
        self.factory.stats.closed[action.by] += 1
        self.record.ended(
            self.session.connect,
            action.by,
            action.why,
            self.factory.reactor.seconds() - self._since,
            self.bytes_in,
            self.bytes_out,
        )

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _on_refuse(self, refusal: S.Refuse) -> None:
        stats = self.factory.stats
        stats.refuse(refusal.reason, self.record.tenant)
        if self.record.tls_version != "-":  # after the handshake: the transport is known
            stats.refused_transport[self.record.transport] += 1
        self.record.refused(refusal.reason, refusal.detail)

    def _start_relay(self, first: bytes) -> None:
        upstream = self.upstream
        assert upstream is not None
        connect = self.session.connect
        assert connect is not None
        trailing = len(first) - len(connect.packet)  # bytes the device sent after its CONNECT
        if self._identity is not None:  # peer_cert_as_*, or the hook's name
            try:
                first = rewritten(first, connect.packet, self._identity)
            except ValueError as e:
                self._on_refuse(S.Refuse(Reason.BAD_IDENTITY, str(e)))
                self._run(self.session.stop(Reason.BAD_IDENTITY, str(e)))
                return
        header = self._proxy_header()
        after = b""
        client_id = connect.client_id
        if isinstance(self._identity, tuple) and self._identity[1] is not None:
            client_id = self._identity[1]
        hooks = PolicyHooks(self._send_upstream, self._end_by, self._log_denied)
        who = Who(self._acl_user or "", client_id, self.record.tenant)
        self._policy = policy_for(self.factory, self.device, who, connect.protocol_level, hooks)
        if self._policy is None:  # MQTT 5: a close of the gateway's own says why
            self._follow = follows(connect.protocol_level, self.device)
        if self._policy is not None:
            # From the first packet after the CONNECT on, those that came with it included.
            after, first = first[len(first) - trailing :], first[: len(first) - trailing]
        send_now(upstream.transport, header + first if header else first)
        # Flow control both ways: a full write buffer on one side pauses reading on the other
        # (through the pacer, when there is one: it pauses the device for its rate too).
        upstream.transport.registerProducer(self._policy or self.transport, True)
        self.transport.registerProducer(upstream.transport, True)
        self.transport.resumeProducing()
        if self._policy is not None and after:
            self._policy.feed(after)
        self.factory.live.add(self)
        self.factory.stats.session_started(self.record.transport, self.record.tenant)
        self._since = self.factory.reactor.seconds()
        revocation = self.factory.revocation
        if revocation is not None:
            tracked = revocation.track(self.verification)
            if tracked:  # OCSP answers refreshed while the session lives
                self._tracked = (revocation, tracked)
        if self.factory.log_connect:  # else the session's one line is at its end
            self.record.accepted(connect)

    def _end_by(self, by: Reason, why: str) -> None:
        """The policy edge or the WebSocket ends the session: a packet over max_packet_size
        or malformed (bad_packet), a denied one with acl_deny_action = disconnect
        (acl_denied), a device over its rate with rate_limit_action = disconnect
        (message_rate), a WebSocket refused or broken (bad_websocket)."""
        if self.session.state is S.State.RELAY:  # (before it, stop refuses, and logs it)
            self._on_refuse(S.Refuse(by, why))
        self._run(self.session.stop(by, why))

    def _log_denied(self, what: str, topic: str, rule: str) -> None:
        if self.factory.denial_logged():
            self.record.denied(self.session.connect, what, topic, rule)

    def _proxy_header(self) -> bytes:
        version, verified = self.factory.upstream_proxy_protocol, self.verification.failure is None
        return proxy_header(version, self.record, self._cn, verified, self.transport)


_HANDLERS: dict[type, Callable[[ClientProtocol, Any], None]] = {
    S.StartTimer: ClientProtocol._on_start_timer,
    S.CancelTimer: ClientProtocol._on_cancel_timer,
    S.Refuse: ClientProtocol._on_refuse,
    S.PauseClient: ClientProtocol._on_pause_client,
    S.OpenUpstream: ClientProtocol._on_open_upstream,
    S.CancelUpstream: ClientProtocol._on_cancel_upstream,
    S.HoldForRevocation: ClientProtocol._on_hold_for_revocation,
    S.AskAuthorization: ClientProtocol._on_ask_authorization,
    S.StartRelay: ClientProtocol._on_start_relay,
    S.SendToClient: ClientProtocol._on_send_to_client,
    S.SendToUpstream: ClientProtocol._on_send_to_upstream,
    S.CloseClient: ClientProtocol._on_close_client,
    S.CloseUpstream: ClientProtocol._on_close_upstream,
    S.RevokedLive: ClientProtocol._on_revoked_live,
    S.SessionEnded: ClientProtocol._on_session_ended,
}
