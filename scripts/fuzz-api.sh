#!/usr/bin/env bash
# Fuzz the HTTP API from its own OpenAPI document with schemathesis: `steward serve` on a
# database given as $1 (seeded with the catalog, tenants, a plan and jobs), every operation
# called with generated valid and invalid input as a master admin. Fails on any 5xx
# or an answer that its schema does not describe (schemathesis's not_a_server_error and
# response_schema_conformance checks), on a crash of the server, or on a panic in its log.
# Validates the served document (openapi-spec-validator, $OPENAPI_SPEC_VALIDATOR) and type-checks
# a TypeScript client generated from it (scripts/check-ts-client.sh) first. Needs the steward
# binary ($STEWARD_BIN) and schemathesis ($SCHEMATHESIS).
set -euo pipefail
cd "$(dirname "$0")/.."

db_url=$1
: "${STEWARD_BIN:?path of the steward binary}"
: "${SCHEMATHESIS:?path of the schemathesis command}"
work=$(mktemp -d /tmp/steward-fuzz.XXXXXX)
export DATABASE_URL="$db_url" STEWARD_EXPORT_DIR="$work/exports" RUST_LOG=warn
export STEWARD_JWT_SECRET="fuzz-only-secret-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"

"$STEWARD_BIN" migrate >/dev/null
"$STEWARD_BIN" catalog load >/dev/null
for t in acme globex; do "$STEWARD_BIN" tenant create "$t" >/dev/null; done
"$STEWARD_BIN" plan create pro Pro >/dev/null
"$STEWARD_BIN" plan subscribe 1 pro >/dev/null
"$STEWARD_BIN" module request 1 inventory >/dev/null
for _ in 1 2 3; do "$STEWARD_BIN" enqueue noop --payload '{}' >/dev/null; done
token=$("$STEWARD_BIN" token --role master_admin --ttl-hours 1)

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$STEWARD_BIN" serve --listen "127.0.0.1:$port" >"$work/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break; sleep 0.1; done

# The document itself: fetched without a token, valid OpenAPI 3.1 (0 errors).
curl -fsS "http://127.0.0.1:$port/openapi.json" >"$work/openapi.json"
"${OPENAPI_SPEC_VALIDATOR:?path of openapi-spec-validator}" "$work/openapi.json"
# A typed client of it compiles.
scripts/check-ts-client.sh "$work/openapi.json"

# (From the run's own directory: schemathesis writes its state, `.schemathesis/`, where it runs.)
(cd "$work" && "$SCHEMATHESIS" run "http://127.0.0.1:$port/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,response_schema_conformance \
  --max-examples "${STEWARD_FUZZ_EXAMPLES:-40}" \
  --no-color)

kill -0 "$server" || { echo "the server died during the fuzz run:" >&2; cat "$work/serve.log" >&2; exit 1; }
if grep -q "panicked" "$work/serve.log"; then
  echo "the server panicked during the fuzz run:" >&2; grep -B2 -A5 panicked "$work/serve.log" >&2; exit 1
fi
echo "fuzz run against $db_url: no 5xx, no crash"
