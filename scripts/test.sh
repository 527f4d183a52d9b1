#!/usr/bin/env bash
# Sets everything up (venv, packages), then runs the whole test suite with real models.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --test
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
