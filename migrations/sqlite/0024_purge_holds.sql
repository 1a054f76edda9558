-- A purge holds the rows it exports: from before its export to the end of its deletions, the
-- module tables' `held` triggers (made on start-up) refuse to insert, change or delete a
-- tenant's row created before `before_at` (steward's own purge deletions pass), so the rows
-- deleted are exactly the rows exported. `before_at` is written as the module tables write
-- `created_at` (`YYYY-MM-DD HH:MM:SS`). SQLite has one writer: the transaction that places a
-- hold waits for every earlier writer, so `held_xid` is not used here (0). One hold per tenant
-- module: purges of a tenant module run one at a time (the workflow's concurrency key).
CREATE TABLE steward_purge_holds (
    tenant_id INTEGER NOT NULL,
    module TEXT NOT NULL,
    before_at TEXT NOT NULL,
    run_id INTEGER NOT NULL,
    held_xid INTEGER NOT NULL,
    held_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, module)
);
