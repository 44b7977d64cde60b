"""twistd plumbing: ``twistd mqttgw --config PATH``."""

from __future__ import annotations

import sys

from twisted.application import service
from twisted.python import usage

from gateway.errors import ConfigError
from gateway.prepare import prepare

DEFAULT_CONFIG = "/etc/mqttgw/mqttgw.conf"


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "A TLS gateway for MQTT brokers: mutual TLS on the outside, the broker inside."
    optParameters = [["config", "c", DEFAULT_CONFIG, "Configuration file."]]

    def postOptions(self) -> None:
        # A configuration error is not a usage error: print the one line that names
        # file, line, key and reason, and exit non-zero before anything listens.
        try:
            self["prepared"] = prepare(self["config"])
        except ConfigError as e:
            print(f"mqttgw: {e}", file=sys.stderr)
            raise SystemExit(1) from None


def makeService(options: Options) -> service.MultiService:
    from twisted.internet import reactor

    from gateway.service import make_gateway_service

    return make_gateway_service(options["prepared"], reactor)


__all__ = ["Options", "makeService"]
