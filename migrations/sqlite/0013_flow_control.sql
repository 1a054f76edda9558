-- Times are unix milliseconds, as in every steward table on SQLite.
-- Flow control shared by every node (src/store/limits.rs, src/queue/limits.rs): the state of
-- each declared limit lives here, not in a process, so one limit holds across all workers.

-- A rate limit's key: the earliest start not yet given to a job (starts are spaced evenly:
-- N per period is one every period / N).
CREATE TABLE steward_limits (
    key       TEXT PRIMARY KEY,
    next_slot INTEGER NOT NULL
);

-- Starts reserved by jobs sent back to wait for them (their attempt not counted): when the
-- job comes back, it takes its reserved start instead of queueing again.
CREATE TABLE steward_limit_slots (
    key    TEXT        NOT NULL,
    job_id INTEGER     NOT NULL,
    slot   INTEGER NOT NULL,
    PRIMARY KEY (key, job_id)
);

-- A concurrency limit's holds: one per job started under it, counted while that job still
-- runs that attempt (a finished, rescued or cancelled job frees its hold by itself).
CREATE TABLE steward_limit_holds (
    key     TEXT    NOT NULL,
    job_id  INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    PRIMARY KEY (key, job_id)
);
