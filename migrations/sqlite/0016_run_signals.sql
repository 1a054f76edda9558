-- Signals sent to workflow runs (a `wait.signal` step completes with its payload): one per
-- run and name, kept with who sent it. Times are unix milliseconds.
CREATE TABLE steward_run_signals (
    run_id  INTEGER NOT NULL,
    name    TEXT    NOT NULL,
    payload TEXT    NOT NULL,
    sent_by TEXT    NOT NULL,
    sent_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, name)
);
