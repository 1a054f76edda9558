-- While a purge transaction deletes rows that are already in a verified export, it holds a row
-- here; the module tables' row-audit DELETE trigger skips its deletions (the export is the
-- record, and copying purged rows into audit_logs would keep the data it must remove).
CREATE TABLE steward_purging (marker INTEGER NOT NULL);
