#!/bin/sh
# Run the gateway on an embedded default: a throwaway CA, a local mosquitto, mqttgw in front.
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh
.venv/bin/python -m pip install -q --disable-pip-version-check .
exec .venv/bin/mqttgw demo "$@"
