-- PostgreSQL's fetch became a function (its 0017) so that its plan does not follow stale
-- statistics; SQLite's fetch needs no change. Kept so both backends share one schema version.
SELECT 1;
