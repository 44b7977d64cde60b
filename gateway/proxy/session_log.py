"""What the log says of one connection, and its lines (HAProxy's tcplog habits): every line
names the listener, the peer and the certificate's subject and serial; the accept line and
the session line (one per relayed session, written when it ends) add the client id, the
MQTT level, the TLS version and whether the session resumed. The structured keys are the
log's interface (benchmarks and tests read them from the JSON log)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from gateway.mqtt import Connect
from gateway.peer import Pending
from gateway.proxy.websocket import Upgrade
from gateway.reasons import Reason, Side
from gateway.tls.native import session_reused

log = Logger(namespace="gateway.proxy.relay")


class SessionLog:
    """One connection's facts as the log says them, filled in as the handshake reveals
    them, and the lines about it."""

    __slots__ = (
        "listener",
        "peer",
        "resumed",
        "serial",
        "subject",
        "tenant",
        "tls_version",
        "transport",
        "websocket",
    )

    def __init__(self, listener: str, peer: str) -> None:
        self.listener = listener
        self.peer = peer
        self.subject = "-"  # the client certificate's subject (RFC 4514), once known
        self.serial = "-"  # its serial, hex
        self.tls_version = "-"  # the handshake's protocol version (TLSv1.3, TLSv1.2)
        self.resumed = False  # whether the handshake resumed a session
        self.transport = "tls"  # tls, or wss once the device speaks WebSocket
        self.websocket: Upgrade | None = None  # its upgrade, once accepted
        self.tenant: str | None = None  # the tenant its server name chose (SNI), if any

    def handshake(self, connection: Any) -> None:
        """What the completed handshake says: version, resumption, the tenant chosen."""
        self.tls_version = connection.get_protocol_version_name()
        self.resumed = session_reused(connection)
        self.tenant = getattr(connection.get_context(), "mqttgw_tenant", None)

    def upgraded(self, upgrade: Upgrade) -> None:
        """The device's WebSocket upgrade was accepted (a proxy may have named its address)."""
        self.websocket = upgrade

    @property
    def has_certificate(self) -> bool:
        return self.subject != "-"

    def _emit(self, emit: Callable[..., None], text: str, **fields: Any) -> None:
        values = {
            "listener": self.listener,
            "peer": self.peer,
            "subject": self.subject,
            "serial": self.serial,
            **fields,
        }
        # The line formatted here by str.format_map (C; Twisted's own formatter is Python,
        # 7 % of the CPU of a resumed handshake with the session line); the fields stay the
        # event's keys for structured observers. Anything odd: Twisted formats it.
        try:
            line = text.format_map(values)
        except Exception:
            emit(text, **values)
            return
        emit("{mqttgw_line}", mqttgw_line=line, **values)

    def _session(self, connect: Connect | None) -> dict[str, Any]:
        ws = self.websocket
        forwarded = "-"
        if ws is not None and ws.forwarded is not None:
            host, port = ws.forwarded
            forwarded = f"{host}:{port}" if port is not None else host
        return {
            "transport": self.transport,
            "subprotocol": ws.subprotocol or "-" if ws is not None else "-",
            "origin": ws.origin or "-" if ws is not None else "-",
            "forwarded": forwarded,
            "client_id": connect.client_id if connect is not None else "",
            "mqtt_level": connect.protocol_level if connect is not None else "-",
            "tls": self.tls_version,
            "resumed": "yes" if self.resumed else "no",
            "tenant": self.tenant or "-",
        }

    def _transport_text(self) -> str:
        """What the session lines say of the transport (their fields are all structured)."""
        tenant = "tenant={tenant} " if self.tenant is not None else ""
        if self.websocket is None:
            return tenant + "transport={transport} "
        return tenant + (
            "transport={transport} subprotocol={subprotocol} origin={origin!r} "
            "forwarded={forwarded} "
        )

    def refused(self, reason: Reason, detail: str) -> None:
        tenant = "tenant={tenant} " if self.tenant is not None else ""
        self._emit(
            log.warn,
            "refused {listener} peer={peer} reason={reason} " + tenant + "subject={subject}: "
            "{detail}",
            reason=reason.value,
            detail=detail,
            tenant=self.tenant or "-",
        )

    def holding(self, pending: Pending) -> None:
        """The device waits for its revocation status (a CRL fetched, an OCSP answer)."""
        waits = []
        if pending.crl is not None:
            waits.append(f"the CRL at {pending.crl.url} is fetched")
        if pending.ocsp:
            waits.append("the OCSP responder answers")
        what = " and ".join(waits)
        self._emit(
            log.info, "holding {listener} peer={peer} subject={subject} until {what}", what=what
        )

    def accepted(self, connect: Connect | None) -> None:
        self._emit(
            log.info,
            "accepted {listener} peer={peer} subject={subject} serial={serial} "
            + self._transport_text()
            + "client_id={client_id!r} mqtt={mqtt_level} tls={tls} resumed={resumed}",
            **self._session(connect),
        )

    def revoked_live(self) -> None:
        self._emit(
            log.warn,
            "closing {listener} peer={peer} subject={subject} serial={serial}: certificate "
            "revoked by a revocation update (CRL or OCSP)",
        )

    def denied(self, connect: Connect | None, what: str, topic: str, rule: str) -> None:
        self._emit(
            log.warn,
            "denied {listener} peer={peer} subject={subject} client_id={client_id!r}: "
            "{what} {topic!r} (acl_file {rule})",
            client_id=connect.client_id if connect is not None else "-",
            what=what.upper(),
            topic=topic,
            rule=rule,
        )

    def ended(
        self,
        connect: Connect | None,
        by: Reason | Side,
        why: str,
        duration: float,
        bytes_in: int,
        bytes_out: int,
    ) -> None:
        """The session line: what the accept line would say, then duration, bytes, who
        closed it and how."""
        self._emit(
            log.info,
            "session ended {listener} peer={peer} subject={subject} serial={serial} "
            + self._transport_text()
            + "client_id={client_id!r} mqtt={mqtt_level} tls={tls} resumed={resumed} "
            "duration={duration:.1f}s bytes_in={bytes_in} bytes_out={bytes_out} "
            "closed_by={closed_by}: {why}",
            **self._session(connect),
            duration=duration,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            closed_by=by,
            why=why,
        )
