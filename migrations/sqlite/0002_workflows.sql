-- Workflow runs and their steps (SQLite dialect; timestamps in unix milliseconds).
CREATE TABLE steward_runs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow        TEXT    NOT NULL,
    params          TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'completed', 'compensating', 'failed', 'cancelled')),
    current_step    INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT    UNIQUE,
    concurrency_key TEXT,
    error           TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    finished_at     INTEGER
);
CREATE INDEX steward_runs_active ON steward_runs (state) WHERE state IN ('queued', 'running', 'compensating');
-- One active run per concurrency key: later runs with the key wait as 'queued'.
CREATE UNIQUE INDEX steward_runs_one_active ON steward_runs (workflow, concurrency_key)
    WHERE concurrency_key IS NOT NULL AND state IN ('running', 'compensating');

CREATE TABLE steward_run_steps (
    run_id      INTEGER NOT NULL REFERENCES steward_runs (id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    name        TEXT    NOT NULL,
    state       TEXT    NOT NULL CHECK (state IN ('pending', 'queued', 'waiting', 'completed', 'dead', 'compensating', 'compensated')),
    output      TEXT,
    progress    TEXT,
    job_id      INTEGER,
    error       TEXT,
    started_at  INTEGER,
    finished_at INTEGER,
    PRIMARY KEY (run_id, idx)
);

-- Workflow steps record which run and step wrote a ledger row.
ALTER TABLE steward_ledger ADD COLUMN entry TEXT;

-- Fan-out: the child jobs a step spawned; the step completes when none of them is live.
CREATE TABLE steward_run_children (
    run_id INTEGER NOT NULL,
    idx    INTEGER NOT NULL,
    job_id INTEGER NOT NULL,
    PRIMARY KEY (run_id, idx, job_id)
);
