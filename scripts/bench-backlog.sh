#!/usr/bin/env bash
# execute_noop at 50,000, 200,000 and 1,000,000 jobs, two binaries interleaved (old, new, old,
# new…), on PostgreSQL and SQLite; prints the median jobs/s of each. Usage:
#   scripts/bench-backlog.sh OLD_BIN NEW_BIN RUNS POSTGRES_URL
# (SQLite runs on a fresh file the bench makes under the temp directory.)
set -euo pipefail
old=$1 new=$2 runs=$3 pg=$4
out=$(mktemp /tmp/steward-bench-backlog.XXXXXX)
for url in "$pg" sqlite://unused; do
  for jobs in 50000 200000 1000000; do
    for i in $(seq "$runs"); do
      for which in old new; do
        bin=$old; [ "$which" = new ] && bin=$new
        DATABASE_URL=$url RUST_LOG=warn "$bin" bench --scenario execute_noop --jobs "$jobs" \
          | sed "s/^{/{\"binary\":\"$which\",\"run\":$i,/" >>"$out"
      done
    done
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {}
for r in rows:
    by.setdefault((r["backend"], r["jobs"]), {}).setdefault(r["binary"], []).append(r["jobs_per_s"])
for (backend, jobs), v in sorted(by.items()):
    print(f"{backend:9} {jobs:>8} old {statistics.median(v['old']):>9.0f} new "
          f"{statistics.median(v['new']):>9.0f}  old runs {v['old']} new runs {v['new']}")
PY
echo "raw JSON lines: $out" >&2
