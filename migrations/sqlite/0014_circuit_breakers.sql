-- Circuit breakers (src/store/limits.rs): per dependency key, the failed attempts in a row;
-- while `opened_at` is set the circuit is open, and once `open_ms` have passed one probe job
-- (`probe_job`, until `probe_until`) may try the dependency. Times are unix milliseconds.
CREATE TABLE steward_breakers (
    key         TEXT PRIMARY KEY,
    failures    INTEGER NOT NULL DEFAULT 0,
    opened_at   INTEGER,
    open_ms     INTEGER NOT NULL,
    probe_job   INTEGER,
    probe_until INTEGER,
    changed_at  INTEGER NOT NULL
);
