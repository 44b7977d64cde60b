#!/bin/sh
# Run the whole test suite: tox (py310..py313 where installed, lint, typing).
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh
# Headless Chromium (Debian's package) loads the status page in the operations tests;
# HAProxy (Debian's package) sends PROXY headers to the gateway in the broker-side tests.
need=""
command -v chromium >/dev/null 2>&1 || need="$need chromium"
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need="$need haproxy"
if [ -n "$need" ]; then
    echo "installing Debian packages:$need"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
    # The package starts a system-wide HAProxy; the tests start their own.
    if command -v systemctl >/dev/null 2>&1; then systemctl stop haproxy 2>/dev/null || true; fi
fi
.venv/bin/python -m pip install -q --disable-pip-version-check 'tox>=4'
# sslyze, for the Mozilla TLS profile test, in an environment of its own: it pins a
# cryptography older than the one pyOpenSSL needs (tests/tools/sslyze_scan.py runs in it).
if ! .venv-sslyze/bin/python -m pip --version >/dev/null 2>&1; then
    rm -rf .venv-sslyze  # absent, or left half-made by an interrupted run
    python3 -m venv .venv-sslyze
fi
.venv-sslyze/bin/python -m pip install -q --disable-pip-version-check 'sslyze>=6.1,<7'
# Where pyenv manages the interpreters, put every installed 3.10-3.13 on PATH for tox (its
# shims do not work in the scrubbed environment tox queries interpreters with).
if command -v pyenv >/dev/null 2>&1; then
    for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.1[0-3]\.[0-9]+$'); do
        PATH="$(pyenv root)/versions/$v/bin:$PATH"
    done
    export PATH
fi
exec .venv/bin/tox "$@"
