#!/usr/bin/env bash
# Install Shield into .venv and run the demo: a sample service with Shield in front of it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
exec .venv/bin/shield demo "$@"
