#!/usr/bin/env bash
# Quick start, step 1: set up, then run the main job (the demo) on the shipped data set.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/streaming-als demo "$@"
