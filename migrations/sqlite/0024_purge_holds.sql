-- A purge holds the rows it exports: from before its export to the end of its deletions, the
-- module tables' `held` triggers (made on start-up) refuse to insert, change or delete a
-- tenant's row created before `purge_before` (steward's own purge deletions pass), so the rows
-- deleted are exactly the rows exported. `purge_before` is written as the module tables write
-- `created_at` (`YYYY-MM-DD HH:MM:SS`); `purge_run`: the purge run that placed it. SQLite has
-- one writer: the transaction that places a hold waits for every other writer, so `purge_xid`
-- is not used here (0).
ALTER TABLE tenant_modules ADD COLUMN purge_before TEXT;
ALTER TABLE tenant_modules ADD COLUMN purge_run INTEGER;
ALTER TABLE tenant_modules ADD COLUMN purge_xid INTEGER;
