#!/usr/bin/env bash
# Sets everything up, then asks the avatar the bundled question, fully offline on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
.venv/bin/avatarchat talk --input samples/question.wav --input samples/followup.wav --out out/talk
echo "== replies: out/talk/turn-*.wav, transcript: out/talk/transcript.json"
