#!/usr/bin/env bash
# Tenant writes through a module table's guard and audit triggers: 50,000-row INSERT, UPDATE
# and DELETE statements (one statement each) into tenant_inventory_items of tenant 1, in
# schemas guard_old and guard_new, interleaved, 5 rounds; prints the three times (ms) per run.
# Set up each schema with `steward demo` of the binary to compare, run from a checkout (it
# reads jobs/ and workflows/), stopped once it has printed its summary:
#   psql "$URL" -c 'CREATE SCHEMA guard_new'
#   DATABASE_URL="$URL?options=-c%20search_path%3Dguard_new" steward demo
set -euo pipefail
url=${1:-postgres://postgres@127.0.0.1:5432/test}
for round in 1 2 3 4 5; do
  for w in old new; do
    out=$(psql "$url" -qAt <<SQL
SET search_path = guard_$w;
\timing on
INSERT INTO tenant_inventory_items (tenant_id, id, sku, qty) SELECT 1, 1000000 + i, 'bench ' || i, i % 100 FROM generate_series(1, 50000) i;
UPDATE tenant_inventory_items SET qty = qty + 1 WHERE tenant_id = 1 AND id > 1000000;
DELETE FROM tenant_inventory_items WHERE tenant_id = 1 AND id > 1000000;
SQL
)
    echo "$w $(echo "$out" | grep -o 'Time: [0-9.]*' | awk '{print $2}' | tr '\n' ' ')"
  done
done
