-- Pausing a queue: while its row says paused, no worker fetches or starts its jobs. Every
-- pause and resume takes the next `version`; each worker records in steward_workers the last
-- version it has applied, so a pause call returns once every live worker has applied it.
CREATE TABLE steward_queue_states (
    queue      TEXT PRIMARY KEY,
    paused     BOOLEAN NOT NULL,
    changed_by TEXT    NOT NULL,
    changed_at INTEGER NOT NULL,
    version    INTEGER NOT NULL
);

-- The worker processes: each registers at start, beats every heartbeat period (its row lives
-- until `expires_at`), and deletes its row at a graceful shutdown.
CREATE TABLE steward_workers (
    id           TEXT PRIMARY KEY,
    host         TEXT    NOT NULL,
    pid          INTEGER NOT NULL,
    queues       TEXT    NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    running      INTEGER NOT NULL DEFAULT 0,
    control_seen INTEGER NOT NULL DEFAULT 0
);
