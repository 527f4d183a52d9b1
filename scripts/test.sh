#!/usr/bin/env bash
# Sets everything up (venv, packages), then runs the whole test suite with real models.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --test
# The browser tests drive Debian's Chromium and Firefox ESR (never a downloaded browser build);
# the echo tests loop Chromium's audio output into its microphone through PulseAudio; the
# relay-only WebRTC test starts coturn's turnserver on loopback; stress-ng loads the cores for
# the stability runs (scripts/test.sh under `stress-ng --cpu 2`).
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/firefox-esr ] || missing+=(firefox-esr)
[ -x /usr/bin/pulseaudio ] || missing+=(pulseaudio)
[ -x /usr/bin/turnserver ] || missing+=(coturn)
[ -x /usr/bin/stress-ng ] || missing+=(stress-ng)
# A CJK font (1.6 MB), so that headless Chromium draws the Chinese page (screenshots of
# ?lang=zh or configs/zh.yaml) in characters, not boxes.
[ -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || missing+=(fonts-wqy-microhei)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing Debian's ${missing[*]} for the browser, TURN and load tests"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
