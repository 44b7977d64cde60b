"""Keys of revocation: CRL checking of client certificates, OCSP stapling of the listener's own."""

from __future__ import annotations

from gateway.choices import FailurePolicy, OcspCheck, OcspMethod, WithCrl
from gateway.config.keys.key import Key
from gateway.config.values import (
    choice,
    format_bool,
    format_duration,
    format_list,
    format_optional,
    format_size,
    parse_bool,
    parse_duration,
    parse_duration_or_zero,
    parse_path,
    parse_positive_int,
    parse_size,
    parse_urls,
    parse_urls_one,
)

CRL_KEYS: tuple[Key, ...] = (
    Key(
        "enable_crl_cache",
        "crl",
        parse_bool,
        False,
        "Check client certificates against CRLs that the gateway fetches and refreshes "
        "itself (EMQX's name; enable_crl_check is accepted too).",
        format=format_bool,
        aliases=("enable_crl_check",),
    ),
    Key(
        "crl_cache_urls",
        "crl.urls",
        parse_urls,
        (),
        "Comma-separated http(s) URLs of CRLs (PEM, one or more per URL, or DER). Each is "
        "fetched at start-up and then refreshed.",
        format=format_list,
    ),
    Key(
        "crl_cache_http_timeout",
        "crl.http_timeout",
        parse_duration,
        15.0,
        "Time allowed for one CRL download, redirects and body included.",
        global_=True,
        format=format_duration,
    ),
    Key(
        "crl_cache.refresh_interval",
        "crl_refresh_interval",
        parse_duration,
        900.0,
        "Global: how often every CRL is fetched again. A CRL whose nextUpdate comes sooner "
        "is fetched at its nextUpdate; failures are retried with backoff (10s, 20s, 40s, ... "
        "up to this interval).",
        listener=False,
        global_=True,
        aliases=("crl_cache_refresh_interval",),
        format=format_duration,
    ),
    Key(
        "crl_cache.dir",
        "crl_cache_dir",
        parse_path,
        None,
        "Global: directory where each last good CRL and its serial index are written "
        "(atomically); at start-up the kept index serves at once (verified against the kept "
        "CRL a minute later), so that a restart, during a CA outage too, keeps enforcing "
        "revocation without a wait. Unset: nothing is persisted.",
        format=format_optional,
        listener=False,
        global_=True,
        path=True,
    ),
    Key(
        "crl_cache_max_size",
        "crl.max_size",
        parse_size,
        128 * 1024 * 1024,
        "Largest CRL body accepted; a larger download is abandoned and the last good CRL kept.",
        format=format_size,
        global_=True,
    ),
    Key(
        "crl_expired_policy",
        "crl.expired_policy",
        choice(FailurePolicy),
        FailurePolicy.REJECT,
        "What happens when the revocation status of a certificate of the client's chain "
        "cannot be determined (its CRLs past nextUpdate plus crl_grace_period, none ever "
        "obtained, or not covering every reason): reject (fail closed) or accept.",
    ),
    Key(
        "crl_grace_period",
        "crl.grace_period",
        parse_duration_or_zero,
        0.0,
        "How long after its nextUpdate a CRL is still used as if fresh.",
        format=format_duration,
    ),
    Key(
        "crl_cache_from_cert",
        "crl.from_cert",
        parse_bool,
        False,
        "Also fetch and refresh the CRLs named in the CRL Distribution Points of client "
        "certificates whose chain verified. A client whose CRL is not cached yet is held after "
        "its CONNECT until the CRL arrives (at most crl_cache_http_timeout + 5s), then "
        "forwarded or refused with CONNACK 'not authorized'.",
        format=format_bool,
    ),
    Key(
        "crl_cache_capacity",
        "crl.capacity",
        parse_positive_int,
        64,
        "How many distribution-point CRLs are kept; the least recently used is dropped.",
    ),
)


OCSP_KEYS: tuple[Key, ...] = (
    Key(
        "enable_ocsp_stapling",
        "ocsp",
        parse_bool,
        False,
        "Staple a cached, verified OCSP response for the server certificate to handshakes "
        "of clients that ask for one (TLS status_request).",
        format=format_bool,
    ),
    Key(
        "ocsp_responder_url",
        "ocsp.responder_url",
        parse_urls_one,
        None,
        "The OCSP responder. Unset: the OCSP URL of the certificate's Authority Information "
        "Access extension (what `openssl x509 -noout -ocsp_uri` prints).",
        format=format_optional,
    ),
    Key(
        "ocsp_issuer_pem",
        "ocsp.issuer_pem",
        parse_path,
        None,
        "PEM certificate of the server certificate's issuer. Unset: taken from certfile's "
        "chain, else from cacertfile.",
        format=format_optional,
        path=True,
    ),
    Key(
        "ocsp_refresh_interval",
        "ocsp.refresh_interval",
        parse_duration,
        300.0,
        "How often the OCSP response is fetched again; in any case at the latest halfway to "
        "the cached response's nextUpdate. Failures are retried at 10s, 20s, 40s, ...",
        format=format_duration,
    ),
    Key(
        "ocsp_refresh_http_timeout",
        "ocsp.http_timeout",
        parse_duration,
        15.0,
        "Time allowed for one OCSP request, redirects and body included.",
        format=format_duration,
    ),
    Key(
        "ocsp_request_method",
        "ocsp.request_method",
        choice(OcspMethod),
        OcspMethod.POST,
        "post: POST application/ocsp-request; get: the GET form of RFC 6960 appendix A.1 "
        "(base64 request in the URL, cacheable by HTTP proxies).",
    ),
    Key(
        "ocsp_nonce",
        "ocsp.nonce",
        parse_bool,
        False,
        "Send a nonce in each request and require the responder to echo it. Off by default: "
        "many responders answer from pre-signed caches and ignore nonces.",
        format=format_bool,
    ),
    Key(
        "ocsp_cache.dir",
        "ocsp_cache_dir",
        parse_path,
        None,
        "Global: directory where each listener's last valid OCSP response is written "
        "(atomically) and read back at start-up if still valid, so that the first handshakes "
        "after a restart are stapled even while the responder is down. Unset: not persisted.",
        format=format_optional,
        listener=False,
        global_=True,
        path=True,
    ),
)


CLIENT_OCSP_KEYS: tuple[Key, ...] = (
    Key(
        "ocsp_client_check",
        "client_ocsp.mode",
        choice(OcspCheck),
        OcspCheck.OFF,
        "Check client certificates by OCSP (nginx's ssl_ocsp): leaf, the device's own "
        "certificate; chain, every certificate below the trust anchor; off. A certificate "
        "whose cached answer is good is admitted at once; otherwise the device is held after "
        "its TLS handshake (nothing read, nothing sent to the broker) until the responder "
        "answers (at most ocsp_client_http_timeout), then admitted or refused with CONNACK "
        "'not authorized'. A cached 'revoked' refuses the handshake itself.",
        switch=True,
    ),
    Key(
        "ocsp_client_responder_url",
        "client_ocsp.responder_url",
        parse_urls_one,
        None,
        "The OCSP responder asked for every client certificate. Unset: the OCSP URL of each "
        "certificate's Authority Information Access extension (a certificate without one "
        "cannot be checked: ocsp_client_failure_policy decides).",
        format=format_optional,
    ),
    Key(
        "ocsp_client_http_timeout",
        "client_ocsp.http_timeout",
        parse_duration,
        5.0,
        "Time allowed for one OCSP request about a client certificate; also the longest a "
        "device is held waiting for it.",
        format=format_duration,
    ),
    Key(
        "ocsp_client_cache_size",
        "client_ocsp.cache_size",
        parse_positive_int,
        100_000,
        "How many answers are kept (one per certificate); the least recently used goes.",
    ),
    Key(
        "ocsp_client_refresh_interval",
        "client_ocsp.refresh_interval",
        parse_duration,
        300.0,
        "How often the answer for a device with a live session is asked again (and in any "
        "case before its nextUpdate). A 'revoked' answer closes the device's live sessions.",
        format=format_duration,
    ),
    Key(
        "ocsp_client_failure_policy",
        "client_ocsp.failure_policy",
        choice(FailurePolicy),
        FailurePolicy.REJECT,
        "When a certificate's status cannot be determined by OCSP (no responder, the "
        "responder down or too slow, an answer that does not validate, 'unknown', a cached "
        "answer past nextUpdate plus ocsp_client_grace_period): reject (fail closed) or "
        "accept. A 'revoked' answer always refuses.",
    ),
    Key(
        "ocsp_client_grace_period",
        "client_ocsp.grace_period",
        parse_duration_or_zero,
        0.0,
        "How long after its nextUpdate a cached answer is still used when no newer one can "
        "be obtained (as crl_grace_period).",
        format=format_duration,
    ),
    Key(
        "ocsp_client_max_age",
        "client_ocsp.max_age",
        parse_duration,
        3600.0,
        "How long an answer without nextUpdate is used after its thisUpdate.",
        format=format_duration,
    ),
    Key(
        "ocsp_client_max_requests",
        "client_ocsp.max_requests",
        parse_positive_int,
        16,
        "Requests in flight to one responder at most; more wait in a queue. However many "
        "connections wait for one certificate, it is asked about once at a time.",
    ),
    Key(
        "ocsp_client_with_crl",
        "client_ocsp.with_crl",
        choice(WithCrl),
        WithCrl.BOTH,
        "With enable_crl_cache too: both, each certificate must pass both checks (each "
        "undecided one following its own policy); either, a certificate one check cannot "
        "decide is admitted when the other finds it good. A certificate either check finds "
        "revoked is refused in both modes.",
    ),
)
