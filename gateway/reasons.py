"""The vocabulary of refusals: every reason the gateway refuses or ends a connection for,
once. The log's ``reason=``, the ``mqttgw_refused_total`` labels, the status page and the
docs' "Log reason classes" all iterate this enum; nothing spells a reason elsewhere.
Pure: no Twisted, no OpenSSL."""

from __future__ import annotations

import enum


class Word(str, enum.Enum):
    """A member of a vocabulary: a ``str`` whose text is its value (in logs, labels, the
    configuration), that hashes as its value, so plain strings from a worker's report or a
    configuration line land on the same keys."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    __hash__ = str.__hash__


class Reason(Word):
    """A refusal reason: its value is the label operators see, ``text`` a plain default
    detail. A ``str`` (``Reason.REVOKED == "revoked"``) that hashes as its value, so counts
    merged from a worker's report (plain strings) land on the same keys."""

    text: str

    def __new__(cls, value: str, text: str) -> Reason:
        member = str.__new__(cls, value)
        member._value_ = value
        member.text = text
        return member

    # In the TLS handshake: the client certificate.
    NO_CERTIFICATE = "no_certificate", "the client sent no certificate"
    UNKNOWN_CA = "unknown_ca", "the certificate does not chain to cacertfile"
    EXPIRED = "expired", "the certificate has expired"
    NOT_YET_VALID = "not_yet_valid", "the certificate is not yet valid"
    REVOKED = "revoked", "the certificate is revoked"
    BAD_CERTIFICATE = "bad_certificate", "the certificate failed verification"
    DENY_LISTED = "deny_listed", "deny_file names the certificate (its fingerprint or serial)"
    TLS_ERROR = "tls_error", "the TLS handshake failed"
    CLOSED_IN_HANDSHAKE = "closed_in_handshake", "the client closed during the handshake"
    # With CRL checking, where no CRL decides and crl_expired_policy = reject.
    CRL_MISSING = "crl_missing", "no CRL of the issuer is held"
    CRL_EXPIRED = "crl_expired", "the issuer's CRL is past its nextUpdate and grace"
    CRL_INCOMPLETE = "crl_incomplete", "the CRLs held do not cover every reason"
    # With OCSP checking of client certificates.
    OCSP_REVOKED = "ocsp_revoked", "the OCSP responder says the certificate is revoked"
    OCSP_UNKNOWN = "ocsp_unknown", "the OCSP responder does not know the certificate"
    OCSP_UNAVAILABLE = "ocsp_unavailable", "no valid OCSP answer could be obtained in time"
    # After the handshake.
    TENANT_DISABLED = (
        "tenant_disabled",
        "the tenant the server name chose is disabled (enabled = false), or a reload removed it",
    )
    HANDSHAKE_TIMEOUT = "handshake_timeout", "no TLS handshake within handshake_timeout"
    CONNECT_TIMEOUT = "connect_timeout", "no CONNECT within connect_timeout"
    BAD_CONNECT = "bad_connect", "the first packet was not a valid CONNECT"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable", "no broker could be reached"
    BAD_IDENTITY = "bad_identity", "the certificate lacks the value peer_cert_as_* takes"
    AUTH_DENIED = "auth_denied", "the authorization hook (auth_http_url) answered deny"
    AUTH_UNAVAILABLE = (
        "auth_unavailable",
        "no valid answer from auth_http_url in time (auth_http_failure_policy = reject)",
    )
    MESSAGE_RATE = (
        "message_rate",
        "rate_limit_action = disconnect: the device went over messages_rate or bytes_rate",
    )
    ACL_DENIED = "acl_denied", "acl_deny_action = disconnect: a PUBLISH or SUBSCRIBE was denied"
    BAD_PACKET = "bad_packet", "with per-device limits: a packet over max_packet_size or malformed"
    BAD_WEBSOCKET = (
        "bad_websocket",
        "over WebSocket: not a valid upgrade (path, subprotocol, origin), a text or "
        "oversized message, or malformed framing",
    )
    # Before TLS (past 10 per 10 seconds these are summarised in one line).
    TOO_MANY_CONNECTIONS = "too_many_connections", "listener at max_connections"
    TOO_MANY_CONNECTIONS_PER_IP = (
        "too_many_connections_per_ip",
        "address at max_connections_per_ip",
    )
    RATE_LIMITED = "rate_limited", "listener above max_conn_rate"
    RATE_LIMITED_PER_IP = "rate_limited_per_ip", "address above max_conn_rate_per_ip"
    BAD_PROXY_HEADER = "bad_proxy_header", "no valid PROXY header from the load balancer"
    # A connection the gateway ended itself.
    REVOKED_LIVE = "revoked_live", "a CRL or OCSP update revoked a live session's certificate"
    SHUTDOWN = "shutdown", "the gateway stopped before the session was relayed"
    RELOAD = "reload", "a reload removed the listener before the session was relayed"


class Side(Word):
    """Who ended a relayed session when the gateway did not (its own closes are a
    ``Reason``): the ``closed_by`` of the session log and of ``mqttgw_sessions_closed_total``."""

    CLIENT = "client"
    BROKER = "broker"


class CrlVerdict(Word):
    """What the CRLs held say of one certificate (``CrlCache.status``)."""

    GOOD = "good"
    REVOKED = "revoked"
    PENDING = "pending"  # the leaf's distribution point is being fetched (the device waits)
    MISSING = "missing"  # no CRL of its issuer covers it
    EXPIRED = "expired"  # the covering CRL is past its nextUpdate and the grace period
    INCOMPLETE = "incomplete"  # the CRLs held cover only some revocation reasons

    @property
    def refusal(self) -> Reason:
        """The refusal reason of a verdict that crl_expired_policy = reject refuses."""
        return _POLICY_REASONS[self]


class OcspVerdict(Word):
    """What an OCSP answer (or the want of one) says of a certificate."""

    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"  # the responder does not know it
    UNAVAILABLE = "unavailable"  # no valid answer could be had (no responder, an error, late)
    PENDING = "pending"  # being asked (the device waits)


class Outcome(Word):
    """What the revocation checks decide for a certificate, together."""

    ACCEPT = "accept"
    REFUSE = "refuse"
    HOLD = "hold"  # a check is still waiting: the device is held after its CONNECT


class FetchResult(Word):
    """What a CRL source's or a staple's last fetch (or restore from the cache directory)
    came to."""

    UPDATED = "updated"
    UNCHANGED = "unchanged"
    OLDER = "older"  # older than the CRL held: the held one kept
    EXPIRED = "expired"  # past its nextUpdate while the held one is not: the held one kept
    LOADED_FROM_DISK = "loaded_from_disk"
    ERROR = "error"
    DROPPED = "dropped"  # a staple no longer usable (past its nextUpdate): none stapled

    @property
    def kept_out(self) -> str | None:
        """For a fetch that installed nothing because what came was worse than what is
        held, the log's words; else None."""
        return _KEPT_OUT.get(self)


_KEPT_OUT = {
    FetchResult.OLDER: "older than the CRL held, kept the held one",
    FetchResult.EXPIRED: "already past its nextUpdate while the CRL held is not, kept the held one",
}


_POLICY_REASONS = {
    CrlVerdict.REVOKED: Reason.REVOKED,
    CrlVerdict.MISSING: Reason.CRL_MISSING,
    CrlVerdict.EXPIRED: Reason.CRL_EXPIRED,
    CrlVerdict.INCOMPLETE: Reason.CRL_INCOMPLETE,
}
