-- PostgreSQL's acknowledgement finds its jobs by primary key (its 0020); SQLite needs no
-- change. Kept so both backends share one schema version.
SELECT 1;
