#!/usr/bin/env bash
# Run every check and test steward has: formatting, clippy, unit, conformance (PostgreSQL and
# SQLite), runtime, crash and CLI tests. Needs a PostgreSQL: STEWARD_TEST_DATABASE_URL, else
# the local one on 127.0.0.1:5432; if none answers, this script starts the local cluster, or a
# throwaway one from the local initdb, or (as root) installs Debian's postgresql first.
# tests/db_restart.rs restarts that server: STEWARD_TEST_PG_RESTART, else the local
# cluster's pg_ctlcluster.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '== %s\n' "$*" >&2; }

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
    psql "postgres://postgres@127.0.0.1:54329/postgres" -qc 'CREATE DATABASE test' >/dev/null
    export STEWARD_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:54329/test"
    export STEWARD_TEST_PG_RESTART="${as[*]} $bin/pg_ctl -D $dir/data -w restart -m fast >/dev/null"
    return 0
  fi
  log "no PostgreSQL could be found or started; set STEWARD_TEST_DATABASE_URL"; exit 1
}

ensure_postgres
log "PostgreSQL for tests: $STEWARD_TEST_DATABASE_URL"
log "cargo fmt --check"; cargo fmt --all -- --check
log "cargo clippy"; cargo clippy --all-targets --locked -- -D warnings
log "cargo test"; cargo test --locked -- --test-threads 4
log "all tests passed"
