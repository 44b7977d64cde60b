"""The ``mqttgw`` console script: ``check-config``, ``status`` and ``demo``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.config import format_config
from gateway.errors import ConfigError
from gateway.prepare import prepare
from gateway.tls.context import describe_offer


def check_config(path: str) -> int:
    try:
        prepared = prepare(path)
    except ConfigError as e:
        print(f"mqttgw: {e}", file=sys.stderr)
        return 1
    config = prepared.config
    for warning in prepared.all_warnings():
        print(f"mqttgw: {warning}", file=sys.stderr)
    sys.stdout.write(format_config(config))
    for listener in config.listeners:
        if not listener.transport.tls:
            print(f"\n# listener {listener.name}: no TLS (ws: the load balancer in front ends it)")
            continue
        print(f"\n# listener {listener.name} offers (as OpenSSL expands the settings):")
        for line in describe_offer(listener.tls, prepared.materials[listener.name]):
            print(f"#   {line}")
    print(f"# {path}: OK, {len(config.listeners)} listener(s)")
    return 0


DEFAULT_ADMIN = "http://127.0.0.1:9180"


class NoAnswer(Exception):
    """The admin listener did not answer as asked (its words, for the terminal)."""


def ask_admin(admin: str, path: str, token_file: str | None, method: str = "GET") -> Any:
    """The JSON the admin listener answers ``path`` with (the token from ``token_file`` or
    MQTTGW_ADMIN_TOKEN); NoAnswer with why not."""
    import json
    import os
    import urllib.error
    import urllib.request

    token = os.environ.get("MQTTGW_ADMIN_TOKEN")
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            raise NoAnswer(f"cannot read {token_file}: {e.strerror}") from None
    data = b"" if method == "POST" else None
    request = urllib.request.Request(admin.rstrip("/") + path, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        answer = e.read().decode(errors="replace")[:200]
        raise NoAnswer(f"{admin}{path} answered {e.code}: {answer}".strip()) from None
    except (OSError, ValueError) as e:
        raise NoAnswer(f"no answer from {admin}{path}: {getattr(e, 'reason', e)}") from None


def status(admin: str, as_json: bool, token_file: str | None) -> int:
    """``mqttgw status``: the admin listener's /status for a terminal. Exit status as a
    Nagios plugin's: 0 fine, 1 warnings, 2 a problem (or not ready), 3 no answer."""
    import json

    from gateway.admin.terminal import render_text

    try:
        doc = ask_admin(admin, "/status", token_file)
    except NoAnswer as e:
        print(f"mqttgw: {e}", file=sys.stderr)
        return 3
    sys.stdout.write(json.dumps(doc, indent=2) + "\n" if as_json else render_text(doc))
    severities = {p["severity"] for p in doc.get("problems", [])}
    if "error" in severities or not doc.get("ready", {}).get("ok", False):
        return 2
    return 1 if severities else 0


def drain(admin: str, token_file: str | None) -> int:
    """``mqttgw drain``: POST /drain (the gateway stops as on SIGTERM: not ready, then its
    sessions closed at drain_rate, then exit 0). 0 once asked, 3 without an answer."""
    try:
        doc = ask_admin(admin, "/drain", token_file, "POST")
    except NoAnswer as e:
        print(f"mqttgw: {e}", file=sys.stderr)
        return 3
    rate = doc.get("drain_rate")
    print(
        f"mqttgw: draining {doc.get('sessions', 0)} session(s): not ready now, the ports accept "
        f"for {doc.get('ready_delay_seconds', 0):g}s more, then the sessions close over "
        f"{doc.get('drain_seconds', 0):g}s ({rate if rate == 'auto' else f'{rate:g}/s'}), "
        "then the gateway exits"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mqttgw", description="mqttgw utilities")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser(
        "check-config", help="validate a file, print the effective configuration"
    )
    check.add_argument("path")
    st = sub.add_parser(
        "status",
        help="the running gateway's status (exit 0 ok, 1 warnings, 2 problems, 3 no answer)",
    )
    st.add_argument("--admin", default=DEFAULT_ADMIN, help=f"admin URL (default {DEFAULT_ADMIN})")
    st.add_argument("--json", action="store_true", help="print the JSON document")
    st.add_argument("--token-file", help="file holding the admin token (or set MQTTGW_ADMIN_TOKEN)")
    dr = sub.add_parser(
        "drain", help="stop the running gateway gently: not ready, sessions closed at a pace"
    )
    dr.add_argument("--admin", default=DEFAULT_ADMIN, help=f"admin URL (default {DEFAULT_ADMIN})")
    dr.add_argument("--token-file", help="file holding the admin token (or set MQTTGW_ADMIN_TOKEN)")
    demo = sub.add_parser("demo", help="throwaway CA + mosquitto + gateway on this machine")
    demo.add_argument("--dir", help="where to write the demo files (default: a new temp dir)")
    demo.add_argument("--port", type=int, default=8883, help="gateway port (default 8883)")
    demo.add_argument(
        "--keep",
        action="store_true",
        help="keep the demo's files (its CA key, device keys) after it stops",
    )
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return check_config(args.path)
    if args.command == "status":
        return status(args.admin, args.json, args.token_file)
    if args.command == "drain":
        return drain(args.admin, args.token_file)
    from gateway.demo.run import run_demo

    return run_demo(args.dir, args.port, args.keep)


if __name__ == "__main__":
    sys.exit(main())
