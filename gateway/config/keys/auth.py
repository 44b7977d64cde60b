"""Keys of the authorization hook (``auth_http_*``): an HTTP service asked at CONNECT."""

from __future__ import annotations

from gateway.choices import FailurePolicy
from gateway.config.keys.key import Key
from gateway.config.values import (
    choice,
    format_duration,
    format_optional,
    parse_duration,
    parse_duration_or_zero,
    parse_positive_int,
    parse_urls_one,
)

AUTH_KEYS: tuple[Key, ...] = (
    Key(
        "auth_http_url",
        "auth.url",
        parse_urls_one,
        None,
        "An authorization service asked at each CONNECT (EMQX's HTTP authorization): a "
        "POST of JSON (clientid, username, cert_subject, cert_common_name, cert_serial, "
        "cert_fingerprint, cert_issuer, listener, peer_address, protocol_level); HTTP 200 "
        'with {"result": "allow"} or {"result": "deny"}, and optionally "username" (the '
        "name passed to the broker). The device is held, not the gateway, while the answer "
        "comes. Unset: no hook.",
        format=format_optional,
        global_=True,
    ),
    Key(
        "auth_http_timeout",
        "auth.timeout",
        parse_duration,
        5.0,
        "Time allowed for the hook's answer, the wait for a free request included; then "
        "auth_http_failure_policy decides.",
        format=format_duration,
        global_=True,
    ),
    Key(
        "auth_http_cache_ttl",
        "auth.cache_ttl",
        parse_duration_or_zero,
        60.0,
        "How long an answer (allow or deny) is reused for the same certificate, client id "
        "and user name on this listener (at most 100000 answers; 0: ask every time).",
        format=format_duration,
        global_=True,
    ),
    Key(
        "auth_http_failure_policy",
        "auth.failure_policy",
        choice(FailurePolicy),
        FailurePolicy.REJECT,
        "When the hook gives no valid answer in time (down, slow, HTTP other than 200, an "
        "answer that is not the JSON above or over 64 KB, a redirect): reject (CONNACK not "
        "authorized, reason auth_unavailable) or accept.",
        global_=True,
    ),
    Key(
        "auth_http_max_requests",
        "auth.max_requests",
        parse_positive_int,
        32,
        "Requests in flight to the hook at most; more wait in a queue (within "
        "auth_http_timeout). Devices asking the same question share one request.",
        global_=True,
    ),
)
