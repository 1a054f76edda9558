-- PostgreSQL's enqueue function keeps its plan from call to call (its 0019); SQLite needs no
-- change. Kept so both backends share one schema version.
SELECT 1;
