#!/usr/bin/env bash
# Sets everything up, then serves the avatar at http://127.0.0.1:8282/ (offline, CPU only).
# Arguments go to `avatarchat serve`, e.g. scripts/run.sh --host 0.0.0.0 --self-signed
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
echo "== starting the server: open the address below, click Start, allow the microphone and talk"
exec .venv/bin/avatarchat serve "$@"
