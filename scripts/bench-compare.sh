#!/usr/bin/env bash
# Compare two steward binaries on the same database, runs interleaved (old, new, old, new…) so
# that the machine's drift hits both alike; prints the median of each scenario's headline
# figure per binary. Usage:
#   scripts/bench-compare.sh OLD_BIN NEW_BIN RUNS DATABASE_URL SCENARIO [SCENARIO…]
# Every run is `steward bench --scenario S` on a fresh schema (the bench makes its own).
set -euo pipefail
old=$1 new=$2 runs=$3 url=$4; shift 4
out=$(mktemp /tmp/steward-bench-compare.XXXXXX)
for scenario in "$@"; do
  for i in $(seq "$runs"); do
    for which in old new; do
      bin=$old; [ "$which" = new ] && bin=$new
      DATABASE_URL=$url RUST_LOG=warn "$bin" bench --scenario "$scenario" \
        | sed "s/^{/{\"binary\":\"$which\",\"run\":$i,/" >>"$out"
    done
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
keys = {"execute_noop": ["jobs_per_s"], "enqueue_batch_parallel": ["jobs_per_s"],
        "workflow_steps": ["transitions_per_s"], "plan_sync": ["seconds", "subscribe_seconds"],
        "pickup_latency": ["p50_ms", "p99_ms", "enqueue_call_p50_ms", "commit_to_start_p50_ms"],
        "provision_tenants": ["provisionings_per_s"],
        "purge_export": ["rows_per_s", "delete_s"]}
by = {}
for r in rows:
    for k in keys.get(r["scenario"], ["jobs_per_s"]):
        if k in r:
            by.setdefault((r["backend"], r["scenario"], k), {}).setdefault(r["binary"], []).append(r[k])
for (backend, scenario, k), v in sorted(by.items()):
    o, n = statistics.median(v.get("old", [0])), statistics.median(v.get("new", [0]))
    change = (n - o) / o * 100 if o else 0.0
    print(f"{backend:9} {scenario:24} {k:18} old {o:>12.3f} new {n:>12.3f} ({change:+.1f} %)  "
          f"old runs {v.get('old')} new runs {v.get('new')}")
PY
echo "raw JSON lines: $out" >&2
