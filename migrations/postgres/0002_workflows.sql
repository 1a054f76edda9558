-- Workflow runs and their steps. A step runs as a job (steward_jobs); the engine moves a run
-- forward in the same transaction that acknowledges the step's job.
CREATE TABLE steward_runs (
    id              BIGSERIAL   PRIMARY KEY,
    workflow        TEXT        NOT NULL,
    params          JSONB       NOT NULL,
    state           TEXT        NOT NULL,
    current_step    INTEGER     NOT NULL DEFAULT 0,
    idempotency_key TEXT        UNIQUE,
    concurrency_key TEXT,
    error           TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at     TIMESTAMPTZ,
    CONSTRAINT steward_runs_state_check
        CHECK (state IN ('queued', 'running', 'completed', 'compensating', 'failed', 'cancelled'))
);
CREATE INDEX steward_runs_active ON steward_runs (state) WHERE state IN ('queued', 'running', 'compensating');
-- One active run per concurrency key: later runs with the key wait as 'queued'.
CREATE UNIQUE INDEX steward_runs_one_active ON steward_runs (workflow, concurrency_key)
    WHERE concurrency_key IS NOT NULL AND state IN ('running', 'compensating');

CREATE TABLE steward_run_steps (
    run_id      BIGINT      NOT NULL REFERENCES steward_runs (id) ON DELETE CASCADE,
    idx         INTEGER     NOT NULL,
    name        TEXT        NOT NULL,
    state       TEXT        NOT NULL,
    output      JSONB,
    progress    JSONB,
    job_id      BIGINT,
    error       TEXT,
    started_at  TIMESTAMPTZ,
    finished_at TIMESTAMPTZ,
    PRIMARY KEY (run_id, idx),
    CONSTRAINT steward_run_steps_state_check
        CHECK (state IN ('pending', 'queued', 'waiting', 'completed', 'dead', 'compensating', 'compensated'))
);

-- Workflow steps record which run and step wrote a ledger row.
ALTER TABLE steward_ledger ADD COLUMN entry TEXT;

-- Fan-out: the child jobs a step spawned; the step completes when none of them is live.
CREATE TABLE steward_run_children (
    run_id BIGINT  NOT NULL,
    idx    INTEGER NOT NULL,
    job_id BIGINT  NOT NULL,
    PRIMARY KEY (run_id, idx, job_id)
);
