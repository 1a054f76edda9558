-- Pausing a queue: while its row says paused, no worker fetches or starts its jobs. Every
-- pause and resume takes the next `version`; each worker records in steward_workers the last
-- version it has applied, so a pause call returns once every live worker has applied it.
CREATE TABLE steward_queue_states (
    queue      TEXT PRIMARY KEY,
    paused     BOOLEAN     NOT NULL,
    changed_by TEXT        NOT NULL,
    changed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    version    BIGINT      NOT NULL
);

-- The worker processes: each registers at start, beats every heartbeat period (its row lives
-- until `expires_at`), and deletes its row at a graceful shutdown.
CREATE TABLE steward_workers (
    id           TEXT PRIMARY KEY,
    host         TEXT        NOT NULL,
    pid          BIGINT      NOT NULL,
    queues       JSONB       NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL,
    running      BIGINT      NOT NULL DEFAULT 0,
    control_seen BIGINT      NOT NULL DEFAULT 0
);
