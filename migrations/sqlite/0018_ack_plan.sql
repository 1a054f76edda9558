-- PostgreSQL's acknowledgement became a function (its 0018) so that its plan stays linear;
-- SQLite needs no change. Kept so both backends share one schema version.
SELECT 1;
