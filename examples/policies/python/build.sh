#!/usr/bin/env bash
# Builds warm_pool.wasm from warm_pool.py with componentize-py (installed into
# the repository's .venv by scripts/setup). Takes 10-30 s; the component is
# ~18 MB because it carries a Python interpreter.
#   examples/policies/python/build.sh [output.wasm]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
out="${1:-$here/warm_pool.wasm}"
componentize_py="${COMPONENTIZE_PY:-$repo/.venv/bin/componentize-py}"
if [ ! -x "$componentize_py" ]; then
  echo "error: $componentize_py not found: run scripts/setup first (it installs componentize-py into .venv)" >&2
  exit 1
fi
# Write next to the target and rename: a flockd watching that folder must
# never read a half-written component.
tmp="$(dirname "$out")/.$(basename "$out").$$.partial"
trap 'rm -f "$tmp"' EXIT
cd "$here"
"$componentize_py" -d "$repo/wit/v0.1.0" -w policy componentize warm_pool -p "$here" -o "$tmp"
mv "$tmp" "$out"
echo "wrote $out" >&2
