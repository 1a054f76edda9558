-- A purge holds the rows it exports: from before its export to the end of its deletions, the
-- module tables' guard (`steward_module_guard`, remade on start-up) refuses to insert, change
-- or delete a tenant's row created before `purge_before` (steward's own purge deletions pass),
-- so the rows deleted are exactly the rows exported. The hold lives on the tenant module's row,
-- which the guard reads anyway. `purge_run`: the purge run that placed it (purges of a tenant
-- module run one at a time).
--
-- A write the hold could not see must not slip through: every write the guard passes takes
-- the tenant module's advisory lock (`store::sql::data::purge_lock`) shared until its
-- transaction ends, and a hold is placed only with that lock taken alone (so only once no such
-- writer is running; else the purge tries again later). `purge_xid`: the hold's transaction;
-- the deletions skip row versions written after it (by a repeatable-read writer whose
-- snapshot predates it).
ALTER TABLE tenant_modules
    ADD COLUMN purge_before TIMESTAMP,
    ADD COLUMN purge_run BIGINT,
    ADD COLUMN purge_xid BIGINT;

