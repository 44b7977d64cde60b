"""What holds a valid CONNECT before the broker is asked: the revocation decision still to
come (a distribution point's first fetch, an OCSP answer) and the authorization hook
(``auth_http_url``). The adapter's side of ``Session``'s REVOCATION_HOLD and AUTH_HOLD: each
asks, and reports the answer to the session (always: a hold never outlives its bound)."""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.logger import Logger

from gateway.peer import Pending
from gateway.proxy.authorize import AuthRequest, Decision

log = Logger()


def hold_for_revocation(client: Any, pending: Pending) -> None:
    """``client``: a ``relay.ClientProtocol`` whose CONNECT waits for ``pending``."""
    revocation = client.factory.revocation
    assert revocation is not None  # a pending decision comes only from the checker
    client.record.holding(pending)

    def decided(verdict: tuple[Any, str]) -> None:
        client.act(client.session.revocation_decided(*verdict))

    revocation.decide_later(pending).addCallback(decided).addErrback(
        lambda f: log.failure("revocation hold failed", f)
    )


def ask_authorization(client: Any) -> None:
    """Ask the listener's hook about ``client``'s CONNECT; its answer admits or refuses it,
    and may name the user the broker sees."""
    tenant = client.record.tenant
    authorizer = client.factory.authorizer_for(tenant)
    connect = client.session.connect
    assert connect is not None
    if authorizer is None:  # (another tenant of its listener has a hook; its own has none)
        client.act(client.session.authorization_decided(None, ""))
        return
    # The certificate as OpenSSL keeps it: its digest keys the cache; it is parsed only if
    # the hook is asked.
    handle = client.transport.getHandle()
    cert = handle.get_peer_certificate() if isinstance(handle, SSL.Connection) else None
    digest = cert.digest("sha256").replace(b":", b"").lower().decode() if cert else None
    parsed = cert.to_cryptography if cert is not None else None
    name, peer = client.factory.name, client.record.peer
    request = AuthRequest(
        name,
        peer,
        connect.client_id,
        connect.username,
        connect.protocol_level,
        digest,
        tenant,
        parsed,
    )

    def decided(decision: Decision) -> None:
        refusal, detail, username = decision
        if refusal is None and username is not None:
            client.rename(username)
        client.act(client.session.authorization_decided(refusal, detail))

    authorizer.ask(request).addCallback(decided).addErrback(
        lambda f: log.failure("authorization hold failed", f)
    )
