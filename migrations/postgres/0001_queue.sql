-- The durable queue. Two tables keep the hot path small:
--   steward_jobs            every job that is not completed (queued, running, retryable, dead, cancelled)
--   steward_jobs_completed  completed jobs, moved out in the same statement that acknowledges them
-- Each hot-table index is partial, so a job only sits in the index of the state it is in.
CREATE TABLE steward_jobs (
    id               BIGSERIAL PRIMARY KEY,
    kind             TEXT        NOT NULL,
    queue            TEXT        NOT NULL,
    tenant           TEXT        NOT NULL DEFAULT '',
    payload          JSONB       NOT NULL,
    state            TEXT        NOT NULL,
    priority         SMALLINT    NOT NULL DEFAULT 0,
    fair_key         BIGINT      NOT NULL DEFAULT 0,
    attempt          INTEGER     NOT NULL DEFAULT 0,
    max_attempts     INTEGER     NOT NULL,
    timeout_ms       BIGINT      NOT NULL,
    unique_key       TEXT,
    run_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempted_at     TIMESTAMPTZ,
    leased_by        TEXT,
    lease_expires_at TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ,
    errors           JSONB       NOT NULL DEFAULT '[]',
    CONSTRAINT steward_jobs_state_check CHECK (state IN ('scheduled','available','running','retryable','dead','cancelled'))
);

-- fetch: the head of a queue, fairest tenant first (fair_key), stable plan with LIMIT
CREATE INDEX steward_jobs_fetch ON steward_jobs (queue, priority, fair_key, id) WHERE state = 'available';
-- fair keys: the last key handed to a tenant in a queue (jobs without a tenant queue FIFO)
CREATE INDEX steward_jobs_fair ON steward_jobs (queue, tenant, fair_key) WHERE state = 'available' AND tenant <> '';
-- stager: scheduled and retryable jobs whose time has come
CREATE INDEX steward_jobs_due ON steward_jobs (run_at) WHERE state IN ('scheduled','retryable');
-- rescuer: running jobs whose lease expired
CREATE INDEX steward_jobs_lease ON steward_jobs (lease_expires_at) WHERE state = 'running';
-- operators: the dead-letter queue and cancelled jobs
CREATE INDEX steward_jobs_finished ON steward_jobs (state, finished_at) WHERE state IN ('dead','cancelled');
-- uniqueness: one live job per key (a cancelled job frees its key, a completed one leaves this table)
CREATE UNIQUE INDEX steward_jobs_unique ON steward_jobs (unique_key) WHERE unique_key IS NOT NULL AND state <> 'cancelled';

CREATE TABLE steward_jobs_completed (
    id           BIGINT      PRIMARY KEY,
    kind         TEXT        NOT NULL,
    queue        TEXT        NOT NULL,
    tenant       TEXT        NOT NULL,
    payload      JSONB       NOT NULL,
    priority     SMALLINT    NOT NULL,
    attempt      INTEGER     NOT NULL,
    max_attempts INTEGER     NOT NULL,
    timeout_ms   BIGINT      NOT NULL,
    unique_key   TEXT,
    run_at       TIMESTAMPTZ NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    attempted_at TIMESTAMPTZ,
    leased_by    TEXT,
    finished_at  TIMESTAMPTZ NOT NULL,
    errors       JSONB       NOT NULL
);
CREATE INDEX steward_jobs_completed_finished ON steward_jobs_completed (finished_at);

-- Probe table for crash tests and the demo: a handler appends the id of the job it ran.
CREATE TABLE steward_ledger (
    seq       BIGSERIAL PRIMARY KEY,
    job_id    BIGINT      NOT NULL,
    worker    TEXT        NOT NULL,
    at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
