-- PostgreSQL's enqueue function wakes producers once per batch again (its 0023); SQLite needs
-- no change. Kept so both backends share one schema version.
SELECT 1;
