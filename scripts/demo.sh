#!/usr/bin/env bash
# Install Shield into .venv and run the demo: a sample service with Shield in front of it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# pip is quiet here and a first install takes a while: say what is happening before it starts.
echo "shield demo: installing Shield and its dependencies into .venv, compiling its hot path (a few minutes the first time)..." >&2
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
echo "shield demo: installed; starting the demo service and Shield" >&2
exec .venv/bin/shield demo "$@"
