#!/bin/sh
# Shared set-up for scripts/demo.sh and scripts/test.sh, on a fresh Debian machine as root:
# Debian packages the gateway's demo and tests use, then a virtualenv in .venv.
set -eu

need=""
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need="$need mosquitto"
command -v mosquitto_pub >/dev/null 2>&1 || need="$need mosquitto-clients"
command -v openssl >/dev/null 2>&1 || need="$need openssl"
command -v python3 >/dev/null 2>&1 || need="$need python3"
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need="$need python3-venv"
if [ -n "$need" ]; then
    echo "installing Debian packages:$need"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
fi
# The Debian package starts a system-wide mosquitto on port 1883; the demo and the tests start
# their own on free ports, so it is left alone.

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null

# MQTT.js for the demo's browser page (and its test), from the npm registry into .npm/
# (never copied into the repository). Without npm the page says MQTT.js is missing.
if [ ! -f .npm/node_modules/mqtt/dist/mqtt.min.js ]; then
    if command -v npm >/dev/null 2>&1; then
        npm install --silent --no-audit --no-fund --no-save --prefix .npm mqtt@5 >/dev/null 2>&1 \
            || echo "npm install mqtt failed: the demo's browser page will say MQTT.js is missing"
    else
        echo "npm not found: the demo's browser page needs MQTT.js (apt-get install npm)"
    fi
fi
