-- Circuit breakers (src/store/limits.rs): per dependency key, the failed attempts in a row;
-- while `opened_at` is set the circuit is open, and once `open_ms` have passed one probe job
-- (`probe_job`, until `probe_until`) may try the dependency.
CREATE TABLE steward_breakers (
    key         TEXT PRIMARY KEY,
    failures    INTEGER     NOT NULL DEFAULT 0,
    opened_at   TIMESTAMPTZ,
    open_ms     BIGINT      NOT NULL,
    probe_job   BIGINT,
    probe_until TIMESTAMPTZ,
    changed_at  TIMESTAMPTZ NOT NULL
);
