"""Keys for operating the gateway: the stats line, drains, the admin listener, worker processes."""

from __future__ import annotations

from gateway.choices import Affinity
from gateway.config.keys.key import Key
from gateway.config.values import (
    choice,
    format_bool,
    format_drain_rate,
    format_duration,
    format_optional,
    format_optional_bind,
    format_workers,
    parse_admin_bind,
    parse_bool,
    parse_drain_rate,
    parse_duration,
    parse_duration_or_zero,
    parse_path,
    parse_server_reference,
    parse_workers,
)

OPERATION_KEYS: tuple[Key, ...] = (
    Key(
        "stats_log_interval",
        "stats_log_interval",
        parse_duration,
        300.0,
        "Global: every this often, one log line per listener with active, accepted and refused "
        "connections (by reason), bytes relayed, CRL counts, and the longest reactor stall "
        "in the period (measured at every turn of the event loop).",
        listener=False,
        global_=True,
        format=format_duration,
    ),
    Key(
        "shutdown_drain",
        "shutdown_drain",
        parse_duration_or_zero,
        5.0,
        "Global: on SIGTERM the gateway stops accepting, gives open connections this long "
        "to end by themselves, then closes the rest (each relayed session logged with "
        "closed_by=shutdown) and exits 0.",
        listener=False,
        global_=True,
        format=format_duration,
    ),
    Key(
        "drain_rate",
        "drain_rate",
        parse_drain_rate,
        None,
        "Global: during the shutdown_drain, close sessions at this many per second, oldest "
        "first, so that the fleet reconnects elsewhere spread out instead of all in one "
        "second (the rest are closed when shutdown_drain ends). auto: spread evenly over "
        "the drain; 0: none before the drain ends. With workers, shared among them.",
        format=format_drain_rate,
        listener=False,
        global_=True,
    ),
    Key(
        "drain_ready_delay",
        "drain_ready_delay",
        parse_duration_or_zero,
        0.0,
        "Global: on SIGTERM or POST /drain, readiness turns false at once (/ready 503, "
        "mqttgw_ready 0) while the ports keep accepting for this long, so that a load "
        "balancer stops sending devices before any is refused; then the drain starts.",
        format=format_duration,
        listener=False,
        global_=True,
    ),
    Key(
        "drain_server_reference",
        "drain_server_reference",
        parse_server_reference,
        None,
        "Global: MQTT 5 sessions closed by a drain get DISCONNECT 0x9C (use another server) "
        "with this Server Reference (a host[:port] or a list the devices understand); "
        "unset: 0x8B (server shutting down).",
        format=format_optional,
        listener=False,
        global_=True,
    ),
    Key(
        "reload_drain",
        "reload_drain",
        parse_duration_or_zero,
        60.0,
        "Global: when a reload removes a listener, it stops accepting at once and its open "
        "connections get this long to end before they are closed (closed_by=reload).",
        listener=False,
        global_=True,
        format=format_duration,
    ),
    Key(
        "admin.listen",
        "admin_listen",
        parse_admin_bind,
        None,
        "Global: the admin HTTP listener ([ip:]port; a bare port binds 127.0.0.1): status "
        "page, /status, /metrics, /ready, /live, POST /refresh and /reload. Unset: off. An "
        "address other than loopback requires admin.token_file.",
        format=format_optional_bind,
        listener=False,
        global_=True,
    ),
    Key(
        "admin.token_file",
        "admin_token_file",
        parse_path,
        None,
        "Global: a file holding the bearer token of the admin listener (at least 16 "
        "characters; compared in constant time). Needed for /reload and /refresh, and for any "
        "bind other than loopback.",
        format=format_optional,
        listener=False,
        global_=True,
        path=True,
    ),
    Key(
        "admin.open_read",
        "admin_open_read",
        parse_bool,
        False,
        "Global: with a token, leave the reading endpoints (/, /status, /metrics, /ready, "
        "/live) open to requests without it. /reload and /refresh always need the token.",
        format=format_bool,
        listener=False,
        global_=True,
    ),
    Key(
        "takeover_socket",
        "takeover_socket",
        parse_path,
        None,
        "Global: a unix socket (mode 0600) on which the running gateway hands its listening "
        "sockets to a new one started with --takeover (SCM_RIGHTS, as HAProxy's -x), then "
        "drains once the new one accepts on every listener: an upgrade without a closed "
        "port. Unset: no takeover.",
        format=format_optional,
        listener=False,
        global_=True,
        path=True,
    ),
    Key(
        "watch_files",
        "watch_files",
        parse_bool,
        True,
        "Global: watch the files the listeners' TLS and rules are read from (certfile, keyfile,"
        " cacertfile, ocsp_issuer_pem, acl_file, deny_file, the upstream TLS files; inotify, "
        "and a look every watch_files_interval that also sees a Kubernetes secret's ..data "
        "swap) and reload as on SIGHUP once a change has settled: a certificate renewed on disk"
        " is served from the next handshake, live sessions untouched. New files that do not "
        "parse or do not match are refused like any reload: the running ones stay. false: "
        "SIGHUP and POST /reload only. Changing it needs a restart.",
        format=format_bool,
        listener=False,
        global_=True,
    ),
    Key(
        "watch_files_interval",
        "watch_files_interval",
        parse_duration,
        5.0,
        "Global: how often watch_files looks at the files (a stat of each, off the event "
        "loop); a change is acted on once two looks a second apart agree.",
        format=format_duration,
        listener=False,
        global_=True,
    ),
)


WORKER_KEYS: tuple[Key, ...] = (
    Key(
        "workers",
        "workers",
        parse_workers,
        1,
        "Global: serving processes. 1: one process does everything. auto: one per CPU the "
        "process may use (one process on a single CPU); N: N. With more than one, the "
        "process twistd starts is the master: "
        "it binds every port (before dropping privileges), fetches CRLs and OCSP once for "
        "all, and starts N workers that serve connections on sockets it hands them "
        "(SO_REUSEPORT: the kernel spreads connections). A worker that dies is restarted "
        "with backoff; the ports stay open while the master lives. Changing it needs a "
        "restart.",
        format=format_workers,
        listener=False,
        global_=True,
    ),
    Key(
        "worker_affinity",
        "worker_affinity",
        choice(Affinity),
        Affinity.AUTO,
        "Global, with workers: which worker gets a connection. address: always the same one "
        "for a client address (a reconnecting device meets the worker holding its TLS "
        "session, so it resumes); kernel: the kernel's hash of address and port (spreads "
        "devices behind one NAT address too). auto: address, except on listeners with "
        "proxy_protocol (every connection comes from the load balancer): kernel.",
        listener=False,
        global_=True,
    ),
)


LOG_KEYS: tuple[Key, ...] = (
    Key(
        "log_connect",
        "log_connect",
        parse_bool,
        False,
        "Also a line when a session is accepted (relayed to the broker). Off: one line per "
        "session, at its end (HAProxy's tcplog), carrying the same fields; refusals keep "
        "their own line either way.",
        format=format_bool,
        global_=True,
    ),
)
