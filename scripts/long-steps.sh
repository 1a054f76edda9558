#!/usr/bin/env bash
# The full long-step scenario of issue #13 on SQLite (the test suite runs 3 of the 12 steps:
# SQLite has one writer, so 12 steps holding it for 15 s each take three minutes): 12 workflow
# steps that hold their transaction 15 s and 3 plain 14 s jobs on one worker with the default
# settings; every job must take exactly one attempt. Needs STEWARD_TEST_DATABASE_URL only for
# the PostgreSQL half, which runs the full 12 in the suite already.
set -euo pipefail
cd "$(dirname "$0")/.."
STEWARD_LONG_STEPS_SQLITE=12 cargo test --release --test production_defaults sqlite -- --nocapture
