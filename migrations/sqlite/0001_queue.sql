-- The durable queue, SQLite dialect: the same two tables and partial indexes as PostgreSQL.
-- Timestamps are unix epoch milliseconds (INTEGER); payload and errors are JSON text.
CREATE TABLE steward_jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    kind             TEXT    NOT NULL,
    queue            TEXT    NOT NULL,
    tenant           TEXT    NOT NULL DEFAULT '',
    payload          TEXT    NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('scheduled','available','running','retryable','dead','cancelled')),
    priority         INTEGER NOT NULL DEFAULT 0,
    fair_key         INTEGER NOT NULL DEFAULT 0,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    timeout_ms       INTEGER NOT NULL,
    unique_key       TEXT,
    run_at           INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    attempted_at     INTEGER,
    leased_by        TEXT,
    lease_expires_at INTEGER,
    finished_at      INTEGER,
    errors           TEXT    NOT NULL DEFAULT '[]'
);

CREATE INDEX steward_jobs_fetch ON steward_jobs (queue, priority, fair_key, id) WHERE state = 'available';
CREATE INDEX steward_jobs_fair ON steward_jobs (queue, tenant, fair_key) WHERE state = 'available' AND tenant <> '';
CREATE INDEX steward_jobs_due ON steward_jobs (run_at) WHERE state IN ('scheduled','retryable');
CREATE INDEX steward_jobs_lease ON steward_jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX steward_jobs_finished ON steward_jobs (state, finished_at) WHERE state IN ('dead','cancelled');
CREATE UNIQUE INDEX steward_jobs_unique ON steward_jobs (unique_key) WHERE unique_key IS NOT NULL AND state <> 'cancelled';

CREATE TABLE steward_jobs_completed (
    id           INTEGER PRIMARY KEY,
    kind         TEXT    NOT NULL,
    queue        TEXT    NOT NULL,
    tenant       TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    priority     INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    timeout_ms   INTEGER NOT NULL,
    unique_key   TEXT,
    run_at       INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    attempted_at INTEGER,
    leased_by    TEXT,
    finished_at  INTEGER NOT NULL,
    errors       TEXT    NOT NULL
);
CREATE INDEX steward_jobs_completed_finished ON steward_jobs_completed (finished_at);

CREATE TABLE steward_ledger (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    worker TEXT    NOT NULL,
    at     INTEGER NOT NULL
);
