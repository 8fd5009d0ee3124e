#!/usr/bin/env bash
# Builds cheapest_first.wasm from cheapest_first.js with componentize-js
# (pinned in package.json; scripts/setup installs it into ./node_modules with
# `npm ci`). Takes 10-20 s; the component is ~12 MB because it carries a
# JavaScript engine (StarlingMonkey).
#   examples/policies/js/build.sh [output.wasm]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
out="${1:-$here/cheapest_first.wasm}"
componentize_js="$here/node_modules/.bin/componentize-js"
if [ ! -x "$componentize_js" ]; then
  echo "error: $componentize_js not found: run scripts/setup first (or: npm ci --prefix $here)" >&2
  exit 1
fi
# -d: no wasi:http import (flockd does not provide it), and no stdio, random
# or clocks either: a policy's only clock is snapshot.now.
tmp="$(dirname "$out")/.$(basename "$out").$$.partial"
trap 'rm -f "$tmp"' EXIT
"$componentize_js" "$here/cheapest_first.js" --wit "$repo/wit/v0.1.0" --world-name policy \
  -d stdio random clocks http fetch-event -o "$tmp"
# Rename into place: a flockd watching that folder never reads half a file.
mv "$tmp" "$out"
echo "wrote $out" >&2
