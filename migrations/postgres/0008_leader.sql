-- One node runs the periodic services (cron, sweeper, reconciler, maintenance): the holder of
-- this row's lease, renewed by its elector; another node takes over once it expires.
CREATE TABLE steward_leaders (
    name       TEXT PRIMARY KEY,
    holder     TEXT        NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
