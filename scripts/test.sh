#!/bin/sh
# Run the whole test suite: tox (py310..py313 where installed, lint, typing).
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh
.venv/bin/python -m pip install -q --disable-pip-version-check 'tox>=4'
# Where pyenv manages the interpreters, make every installed 3.10-3.13 visible to tox.
if command -v pyenv >/dev/null 2>&1; then
    versions=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.1[0-3]\.[0-9]+$' | sort -rV | tr '\n' ':')
    [ -n "$versions" ] && export PYENV_VERSION="${versions%:}"
fi
exec .venv/bin/tox "$@"
