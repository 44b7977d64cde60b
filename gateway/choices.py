"""The configuration's choices, as enums (pure): each key whose value is one of a few
words is parsed into one of these, so that the code compares members, never spellings, and
the docs and ``check-config`` iterate them. Their text is the configuration's word."""

from __future__ import annotations

from gateway.reasons import Word


class Transport(Word):
    """How devices reach a listener: ``listener.<transport>.<name>``."""

    SSL = "ssl"  # MQTT over TLS (and, with alpn listing http/1.1, MQTT over WebSocket)
    WSS = "wss"  # MQTT over WebSocket over TLS
    WS = "ws"  # MQTT over WebSocket, TLS ended by a load balancer in front

    @property
    def tls(self) -> bool:
        """Whether the gateway itself speaks TLS with the devices here."""
        return self is not Transport.WS


class FailurePolicy(Word):
    """``crl_expired_policy``, ``ocsp_client_failure_policy``: a certificate whose status
    cannot be determined is refused or admitted."""

    REJECT = "reject"
    ACCEPT = "accept"


class OcspMethod(Word):
    """``ocsp_request_method``."""

    POST = "post"
    GET = "get"


class OcspCheck(Word):
    """``ocsp_client_check``: which certificates of a device's chain OCSP checks."""

    OFF = "off"
    LEAF = "leaf"
    CHAIN = "chain"


class WithCrl(Word):
    """``ocsp_client_with_crl``: both verdicts must admit, or either may."""

    BOTH = "both"
    EITHER = "either"


class Balance(Word):
    """``upstream_balance``."""

    LEAST_CONN = "least_conn"
    ROUND_ROBIN = "round_robin"
    CLIENT_ID = "client_id"


class HealthCheck(Word):
    """``upstream_check``: what an active health check of a broker does."""

    TCP = "tcp"
    MQTT = "mqtt"


class ProxyVersion(Word):
    """``upstream_proxy_protocol``."""

    V1 = "v1"
    V2 = "v2"


class Affinity(Word):
    """``worker_affinity``: how connections are spread over the workers."""

    AUTO = "auto"
    ADDRESS = "address"
    KERNEL = "kernel"


class TlsIo(Word):
    """``tls_io``: where OpenSSL reads and writes."""

    AUTO = "auto"  # (the one way: transport)
    TRANSPORT = "transport"  # a transport of mqttgw's own over memory BIOs


class RateAction(Word):
    """``rate_limit_action``: a device over its rate is paused or disconnected."""

    PAUSE = "pause"
    DISCONNECT = "disconnect"


class AclDefault(Word):
    """``acl_default``: what a topic no acl_file line matches gets."""

    DENY = "deny"
    ALLOW = "allow"


class DenyAction(Word):
    """``acl_deny_action``: what a denied PUBLISH or SUBSCRIBE does."""

    IGNORE = "ignore"  # dropped (acknowledged, or refused in the SUBACK); the session goes on
    DISCONNECT = "disconnect"  # the session ends


class AclReadMode(Word):
    """``acl_read_mode``: where the read rules are applied."""

    FILTER = "filter"  # to the SUBSCRIBE: a filter that could receive a denied topic is refused
    DELIVERY = "delivery"  # to each PUBLISH the broker delivers (as Mosquitto does)


class IdentitySource(Word):
    """``peer_cert_as_username``, ``peer_cert_as_clientid``: what of the certificate."""

    CN = "cn"
    DN = "dn"
    CRT = "crt"
    PEM = "pem"
    MD5 = "md5"
