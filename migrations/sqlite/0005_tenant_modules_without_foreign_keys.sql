-- PostgreSQL drops tenant_modules' foreign keys here (bulk plan-module syncs). SQLite cannot
-- drop a constraint without rebuilding the table, and its writes are serialised anyway: its
-- keys stay. This file keeps the two migration histories in step.
SELECT 1;
