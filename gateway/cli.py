"""The ``mqttgw`` console script: ``check-config`` and ``demo``."""

from __future__ import annotations

import argparse
import sys

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
    for material in prepared.materials.values():
        for warning in material.warnings:
            print(f"mqttgw: {warning}", file=sys.stderr)
    sys.stdout.write(format_config(config))
    for listener in config.listeners:
        print(f"\n# listener {listener.name} offers (as OpenSSL expands the settings):")
        for line in describe_offer(listener.tls, prepared.materials[listener.name]):
            print(f"#   {line}")
    print(f"# {path}: OK, {len(config.listeners)} listener(s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mqttgw", description="mqttgw utilities")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser(
        "check-config", help="validate a file, print the effective configuration"
    )
    check.add_argument("path")
    demo = sub.add_parser("demo", help="throwaway CA + mosquitto + gateway on this machine")
    demo.add_argument("--dir", help="where to write the demo files (default: a new temp dir)")
    demo.add_argument("--port", type=int, default=8883, help="gateway port (default 8883)")
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return check_config(args.path)
    from gateway.demo.run import run_demo

    return run_demo(args.dir, args.port)


if __name__ == "__main__":
    sys.exit(main())
