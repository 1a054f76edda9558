-- The job kinds' defaults as `jobs/*.toml` declares them, published by every worker runtime
-- at start (PostgreSQL's 0021 uses them for enqueues from SQL; SQLite keeps them too, so
-- both backends answer `kinds_publish` alike).
CREATE TABLE steward_kinds (
    kind         TEXT    PRIMARY KEY,
    queue        TEXT    NOT NULL,
    priority     INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    timeout_ms   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
