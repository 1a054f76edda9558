#!/usr/bin/env bash
# Generate TypeScript types from an OpenAPI document ($1) with openapi-typescript and
# type-check clients/typescript/example.ts against them with `tsc --strict`. The npm packages
# (pinned) are installed once under ~/.cache/steward-tools/ts; nothing is written in the clone.
set -euo pipefail
cd "$(dirname "$0")/.."
doc=$(realpath "$1")
tools="${STEWARD_TOOLS_DIR:-$HOME/.cache/steward-tools}/ts"
if [ ! -x "$tools/node_modules/.bin/tsc" ] || [ ! -x "$tools/node_modules/.bin/openapi-typescript" ]; then
  command -v npm >/dev/null 2>&1 || { echo "the TypeScript client check needs Node.js and npm" >&2; exit 1; }
  mkdir -p "$tools"
  [ -f "$tools/package.json" ] || echo '{"private": true}' >"$tools/package.json"
  (cd "$tools" && npm install --no-audit --no-fund --silent openapi-typescript@7.13.0 typescript@5.9.3)
fi
work=$(mktemp -d /tmp/steward-ts.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp clients/typescript/example.ts "$work/"
"$tools/node_modules/.bin/openapi-typescript" "$doc" -o "$work/steward-api.d.ts" >/dev/null
"$tools/node_modules/.bin/tsc" --strict --noEmit --target es2022 --module es2022 \
  --moduleResolution bundler --lib es2022,dom "$work/example.ts"
echo "TypeScript client from $1: type-checks"
