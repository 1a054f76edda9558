-- PostgreSQL marks a purge with the transaction setting `steward.purge` (see the audit
-- function in src/store/postgres_domain.rs); SQLite needs a table (0006 there). Kept so the
-- migration numbers of both backends stay aligned.
SELECT 1;
