"""In-memory TLS between a test client and a listener's factory: no sockets, a fake clock."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import protocol, task
from twisted.internet.address import IPv4Address
from twisted.internet.ssl import (
    Certificate,
    PrivateCertificate,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim

from gateway import testing as support
from gateway.config import ListenerSettings
from gateway.proxy.broker_link import UpstreamFactory
from gateway.proxy.entry import Gate
from gateway.proxy.factory import GatewayFactory, session_limits
from gateway.status import ListenerStats
from gateway.testing import prepare_text
from gateway.tls.context import ServerConnectionCreator, build_context
from gateway.tls.material import TlsMaterial
from gateway.tls.verify import CertificateVerifier


class RecordingClient(protocol.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost: Any = None
        self.handshake_done = False

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = reason


@attrs.define
class FakeUpstream:
    """Stands in for ``connect_upstream``: the test decides each attempt's outcome."""

    attempts: list[Any] = attrs.Factory(list)
    cancelled: int = 0

    def __call__(self, client: Any, client_id: str) -> Any:
        factory = UpstreamFactory(client, client.upstream_failed)
        self.attempts.append(factory)

        def cancel() -> None:
            self.cancelled += 1

        return cancel

    def succeed(self, index: int = -1) -> tuple[Any, StringTransport]:
        factory = self.attempts[index]
        upstream = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1883))
        transport = StringTransport()
        upstream.makeConnection(transport)
        return upstream, transport

    def fail(self, reason: Any, index: int = -1) -> None:
        self.attempts[index].clientConnectionFailed(None, reason)


def listener_config(p: support.Pki, **extra: str) -> tuple[ListenerSettings, TlsMaterial]:
    prepared = prepare_text(support.listener_conf("t", 8883, 1883, p, extra))
    return prepared.config.listener("t"), prepared.materials["t"]


@attrs.frozen
class Parts:
    """What the relay reads of a listener's parts, with a fake broker connection."""

    settings: ListenerSettings
    connector: Any
    revocation: Any = None
    deny: Any = None  # deny_file's list

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def session_limits(self) -> Any:
        return session_limits(self.settings.limits)

    def identity_for(self, tenant: str | None) -> Any:
        return self.settings.identity

    @property
    def upstream_name(self) -> str:
        host, port = self.settings.upstream.address
        return f"{host}:{port}"

    @property
    def upstream_proxy_protocol(self) -> str | None:
        return self.settings.upstream.proxy_protocol

    @property
    def log_connect(self) -> bool:
        return self.settings.log_connect

    def device_limits_for(self, tenant: str | None) -> Any:
        return None

    @property
    def acl(self) -> Any:
        return None

    @property
    def acl_deny_action(self) -> str:
        return "ignore"

    @property
    def acl_read_mode(self) -> str:
        return "filter"

    def connector_for(self, tenant: str | None) -> Any:
        return self.connector

    def acl_for(self, tenant: str | None) -> Any:
        return None

    @property
    def websocket(self) -> Any:
        return self.settings.websocket if self.settings.websocket_enabled else None

    @property
    def websocket_only(self) -> bool:
        return self.settings.transport != "ssl"

    @property
    def plain(self) -> bool:
        return not self.settings.transport.tls

    @property
    def server_reference(self) -> str | None:
        return None


class GatedTLSFactory(TLSMemoryBIOFactory):
    """In-memory TLS for the relay's unit tests (Twisted's TLSMemoryBIOProtocol over
    iosim: no sockets; the gateway's own transport needs one, its tests are in
    tests/integration), each connection admitted by the listener's gate first."""

    noisy = False

    def __init__(self, creator: Any, gate: Gate, clients: Any, reactor: Any) -> None:
        super().__init__(creator, False, clients, clock=reactor)
        self.gate = gate

    def buildProtocol(self, addr: Any) -> Any:
        key = self.gate.admit(addr)
        if key is None:
            return None
        protocol = super().buildProtocol(addr)
        self.gate.opened(protocol, key)
        return protocol

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        self.gate.closed(p)


@attrs.define
class Box:
    parts: Parts


@attrs.define
class Listener:
    config: ListenerSettings
    material: TlsMaterial
    reactor: MemoryReactorClock
    upstream: FakeUpstream
    stats: ListenerStats
    creator: ServerConnectionCreator
    factory: GatedTLSFactory

    @classmethod
    def make(cls, p: support.Pki, deny: Any = None, **extra: str) -> Listener:
        config, material = listener_config(p, **extra)
        reactor = MemoryReactorClock()
        upstream = FakeUpstream()
        stats = ListenerStats(config.name)
        context = build_context(config.name, config.tls, material, CertificateVerifier())
        creator = ServerConnectionCreator(lambda: context)
        gateway = GatewayFactory(
            Box(Parts(config, upstream, deny=deny)), reactor, stats, task.cooperate
        )
        return cls(
            config,
            material,
            reactor,
            upstream,
            stats,
            creator,
            GatedTLSFactory(
                creator, Gate(config.name, stats, config.limits, reactor), gateway, reactor
            ),
        )

    def connect(
        self, p: support.Pki, cert: tuple[str, str] | None
    ) -> tuple[Any, RecordingClient, Pump]:
        with open(p.ca_file, "rb") as f:
            ca_pem = f.read()
        roots = [Certificate.loadPEM(block) for block in _pem_blocks(ca_pem)]
        client_cert = None
        if cert is not None:
            with open(cert[0], "rb") as f:
                chain = f.read()
            with open(cert[1], "rb") as f:
                key = f.read()
            client_cert = PrivateCertificate.loadPEM(_pem_blocks(chain)[0] + key)
        options = optionsForClientTLS(
            "localhost", trustRoot=trustRootFromCertificates(roots), clientCertificate=client_cert
        )
        recorder = RecordingClient()
        client_factory = TLSMemoryBIOFactory(
            options, True, protocol.Factory.forProtocol(lambda: recorder), clock=self.reactor
        )
        addr = IPv4Address("TCP", "127.0.0.1", 40000)
        server = self.factory.buildProtocol(addr)
        client = client_factory.buildProtocol(addr)
        pump = iosim.connect(
            server,
            iosim.FakeTransport(server, isServer=True, peerAddress=addr),
            client,
            iosim.FakeTransport(client, isServer=False),
            greet=False,
        )
        return server, recorder, Pump(pump, self.reactor)


@attrs.define
class Pump:
    """iosim's pump, plus the clock ticks that release TLS's aggregated small writes."""

    pump: iosim.IOPump
    reactor: MemoryReactorClock

    def flush(self) -> None:
        for _ in range(3):
            self.reactor.advance(0)
            self.pump.flush()


def _pem_blocks(data: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    return [block.strip() + b"\n" + marker + b"\n" for block in data.split(marker) if block.strip()]
