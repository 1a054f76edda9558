#!/usr/bin/env bash
# Run every check and test steward has: formatting, clippy, unit, conformance (PostgreSQL and
# SQLite), runtime, crash and CLI tests. Needs a PostgreSQL: STEWARD_TEST_DATABASE_URL, else
# the local one on 127.0.0.1:5432; if none answers, this script starts the local cluster, or a
# throwaway one from the local initdb, or (as root) installs Debian's postgresql first.
# tests/db_restart.rs stops and restarts a PostgreSQL: always a throwaway cluster this script
# starts from the local initdb on its own port (never the one above), removed at exit.
# tests/dashboard.rs drives a headless Chromium (Debian's chromium
# and chromium-driver, installed here as root when missing); the API fuzz run uses
# schemathesis and openapi-spec-validator from PyPI (and tests/sql_enqueue.rs psycopg), installed in a venv under
# ~/.cache/steward-tools, and checks a TypeScript client generated from /openapi.json with
# openapi-typescript and tsc from npm (scripts/check-ts-client.sh, same cache).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '== %s\n' "$*" >&2; }

# What the test command started or made, undone at exit whatever happens (a failed test
# included): servers it started, databases and directories it created. Nothing else is touched.
cleanup_steps=()
cleanup() {
  local step
  for step in "${cleanup_steps[@]}"; do eval "$step" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

pg_up() { pg_isready -q -d "$1" 2>/dev/null || psql "$1" -qAtc 'select 1' >/dev/null 2>&1; }

ensure_postgres() {
  if [ -n "${STEWARD_TEST_DATABASE_URL:-}" ]; then
    pg_up "$STEWARD_TEST_DATABASE_URL" && return 0
    log "STEWARD_TEST_DATABASE_URL=$STEWARD_TEST_DATABASE_URL does not answer"; exit 1
  fi
  local url="postgres://postgres@127.0.0.1:5432/test"
  if ! command -v pg_isready >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      log "installing postgresql (Debian package)"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
    else
      log "PostgreSQL is needed: install it, or set STEWARD_TEST_DATABASE_URL"; exit 1
    fi
  fi
  if pg_up "$url"; then export STEWARD_TEST_DATABASE_URL="$url"; return 0; fi
  if pg_up "postgres://postgres@127.0.0.1:5432/postgres"; then
    psql "postgres://postgres@127.0.0.1:5432/postgres" -qc 'CREATE DATABASE test' >/dev/null
    export STEWARD_TEST_DATABASE_URL="$url"; return 0
  fi
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ] && [ -n "$(ls /etc/postgresql 2>/dev/null)" ]; then
    log "starting the local PostgreSQL cluster"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start >/dev/null 2>&1 || true
    for _ in $(seq 30); do pg_up "postgres://postgres@127.0.0.1:5432/postgres" && break; sleep 1; done
    if pg_up "postgres://postgres@127.0.0.1:5432/postgres"; then
      psql "postgres://postgres@127.0.0.1:5432/postgres" -qAtc "SELECT 1 FROM pg_database WHERE datname='test'" | grep -q 1 \
        || psql "postgres://postgres@127.0.0.1:5432/postgres" -qc 'CREATE DATABASE test' >/dev/null
      export STEWARD_TEST_DATABASE_URL="$url"; return 0
    fi
  fi
  # A throwaway cluster from the local initdb, on its own port, owned by an unprivileged user.
  local bin; bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  if [ -n "$bin" ] && [ -x "$bin/initdb" ]; then
    local dir; dir=$(mktemp -d /tmp/steward-pg.XXXXXX)
    local as=(); if [ "$(id -u)" = 0 ]; then chown postgres "$dir" 2>/dev/null && as=(runuser -u postgres --); fi
    log "starting a throwaway PostgreSQL in $dir on port 54329"
    "${as[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust >/dev/null
    "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -o "-p 54329 -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" -w start >/dev/null
    cleanup_steps+=("${as[*]} $bin/pg_ctl -D $dir/data -w stop -m immediate" "rm -rf $dir")
    psql "postgres://postgres@127.0.0.1:54329/postgres" -qc 'CREATE DATABASE test' >/dev/null
    export STEWARD_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:54329/test"
    return 0
  fi
  log "no PostgreSQL could be found or started; set STEWARD_TEST_DATABASE_URL"; exit 1
}

# A PostgreSQL of the test command's own, for the tests that stop and start their database
# (tests/db_restart.rs): initdb'd in a temporary directory, on a free port, removed at exit.
start_outage_cluster() {
  local bin; bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    log "the restart tests need PostgreSQL's initdb and pg_ctl (apt-get install postgresql)"; exit 1
  fi
  local dir; dir=$(mktemp -d /tmp/steward-outage-pg.XXXXXX)
  local as=(); if [ "$(id -u)" = 0 ]; then chown postgres "$dir" && as=(runuser -u postgres --); fi
  local port; port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "${as[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust >/dev/null
  local start="${as[*]} $bin/pg_ctl -D $dir/data -l $dir/log -o '-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off' -w start >/dev/null"
  eval "$start"
  export STEWARD_TEST_OUTAGE_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  export STEWARD_TEST_OUTAGE_START="$start"
  export STEWARD_TEST_OUTAGE_STOP="${as[*]} $bin/pg_ctl -D $dir/data -w stop -m fast >/dev/null"
  cleanup_steps+=("${as[*]} $bin/pg_ctl -D $dir/data -w stop -m immediate" "rm -rf $dir")
  log "throwaway PostgreSQL for the restart tests on port $port ($dir)"
}

ensure_browser() {
  if command -v chromedriver >/dev/null 2>&1 && { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing chromium and chromium-driver (Debian packages) for the dashboard test"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }
    return 0
  fi
  log "the dashboard test needs chromium and chromedriver: apt-get install chromium chromium-driver"; exit 1
}

ensure_schemathesis() {
  local venv="${STEWARD_TOOLS_DIR:-$HOME/.cache/steward-tools}/venv"
  if [ ! -x "$venv/bin/schemathesis" ] || [ ! -x "$venv/bin/openapi-spec-validator" ] \
     || ! "$venv/bin/python" -c 'import psycopg' 2>/dev/null; then
    log "installing schemathesis, openapi-spec-validator and psycopg (PyPI) in $venv"
    { [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"; } \
      && "$venv/bin/pip" install -q 'schemathesis==4.32.5' 'openapi-spec-validator==0.9.0' 'psycopg[binary]==3.3.9' \
      || { log "could not install the Python tools (python3 with venv and pip, and PyPI, are needed)"; exit 1; }
  fi
  export SCHEMATHESIS="$venv/bin/schemathesis" OPENAPI_SPEC_VALIDATOR="$venv/bin/openapi-spec-validator"
  # A Python client of PostgreSQL (psycopg) for the SQL enqueue test.
  export STEWARD_TEST_PYTHON="$venv/bin/python"
}

# docker-compose.yml parses and interpolates (syntax, references, variables): `docker compose
# config`, or Debian's docker-compose when the compose plugin is missing (installed here as
# root when neither is there). No container engine is needed, and none is started.
check_compose() {
  local compose=()
  if docker compose version >/dev/null 2>&1; then compose=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1; then compose=(docker-compose)
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing docker-compose (Debian package) to check docker-compose.yml"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose >/dev/null; }
    compose=(docker-compose)
  else
    log "checking docker-compose.yml needs docker compose or docker-compose"; exit 1
  fi
  # Without STEWARD_JWT_SECRET, as `docker compose up worker` is run.
  env -u STEWARD_JWT_SECRET "${compose[@]}" -f docker-compose.yml config -q
}

# The tests' scratch files (exports nobody reads back) go here, not into the working tree.
STEWARD_TEST_SCRATCH=$(mktemp -d /tmp/steward-test-scratch.XXXXXX)
export STEWARD_TEST_SCRATCH
cleanup_steps+=("rm -rf $STEWARD_TEST_SCRATCH")

ensure_postgres
start_outage_cluster
ensure_browser
ensure_schemathesis
log "PostgreSQL for tests: $STEWARD_TEST_DATABASE_URL"
# Every PostgreSQL schema the tests make starts with this run's prefix (tests/common/mod.rs):
# what a failed or killed test leaves behind is dropped at exit, and nothing of anyone else's.
STEWARD_TEST_SCHEMA_PREFIX=$(printf 'steward_test_%04x%04x' "$RANDOM" "$RANDOM")
export STEWARD_TEST_SCHEMA_PREFIX
drop_test_schemas() {
  psql "$STEWARD_TEST_DATABASE_URL" -qAt -v prefix="${STEWARD_TEST_SCHEMA_PREFIX}_" <<<"
    SELECT format('DROP SCHEMA %I CASCADE;', nspname) FROM pg_namespace
    WHERE starts_with(nspname, :'prefix')" | psql "$STEWARD_TEST_DATABASE_URL" -q
}
cleanup_steps+=("drop_test_schemas")
log "docker-compose.yml (compose config)"; check_compose
log "cargo fmt --check"; cargo fmt --all -- --check
log "cargo clippy"; cargo clippy --all-targets --locked -- -D warnings
log "cargo test"; cargo test --locked -- --test-threads 4

log "API fuzz run from /openapi.json (schemathesis), SQLite and PostgreSQL"
cargo build --locked --quiet
export STEWARD_BIN="${CARGO_TARGET_DIR:-target}/debug/steward"
fuzz_dir=$(mktemp -d /tmp/steward-fuzz-db.XXXXXX)
cleanup_steps+=("rm -rf $fuzz_dir")
scripts/fuzz-api.sh "sqlite://$fuzz_dir/fuzz.db"
pg_admin="${STEWARD_TEST_DATABASE_URL%/*}/postgres"
psql "$pg_admin" -qc 'DROP DATABASE IF EXISTS steward_fuzz' -qc 'CREATE DATABASE steward_fuzz' >/dev/null
cleanup_steps+=("psql '$pg_admin' -qc 'DROP DATABASE IF EXISTS steward_fuzz'")
scripts/fuzz-api.sh "${STEWARD_TEST_DATABASE_URL%/*}/steward_fuzz"
log "all tests passed"
