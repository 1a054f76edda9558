-- Signals sent to workflow runs (a `wait.signal` step completes with its payload): one per
-- run and name, kept with who sent it.
CREATE TABLE steward_run_signals (
    run_id  BIGINT      NOT NULL,
    name    TEXT        NOT NULL,
    payload JSONB       NOT NULL,
    sent_by TEXT        NOT NULL,
    sent_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, name)
);
