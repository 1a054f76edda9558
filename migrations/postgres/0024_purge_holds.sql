-- A purge holds the rows it exports: from before its export to the end of its deletions, the
-- module tables' guard (`steward_module_guard`, remade on start-up) refuses to insert, change
-- or delete a tenant's row created before `before_at` (steward's own purge deletions pass), so
-- the rows deleted are exactly the rows exported. `held_xid`: the transaction that placed the
-- hold; the purge waits for every transaction older than it before it exports (a writer that
-- began before the hold could not see it). One hold per tenant module: purges of a tenant
-- module run one at a time (the workflow's concurrency key).
CREATE TABLE steward_purge_holds (
    tenant_id BIGINT NOT NULL,
    module TEXT NOT NULL,
    before_at TIMESTAMP NOT NULL,
    run_id BIGINT NOT NULL,
    held_xid BIGINT NOT NULL,
    held_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, module)
);
