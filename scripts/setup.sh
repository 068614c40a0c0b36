#!/usr/bin/env bash
# Create .venv and install streaming-als with its test extras (idempotent; safe to rerun).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! command -v java >/dev/null 2>&1; then
    # Spark (engine 'spark' and its tests) needs a JRE; Debian's package is enough.
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless >/dev/null
    else
        echo "warning: no java found; install openjdk-17-jre-headless for the Spark engine" >&2
    fi
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
