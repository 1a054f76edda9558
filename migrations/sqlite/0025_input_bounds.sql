-- Bounds on what callers write (PostgreSQL: a job's tenant length, the monthly cost's width).
-- SQLite needs neither: its indexes take keys of any length and its costs are exact decimal
-- text. The client and `store::data::check_usage` bound the values on both backends.
SELECT 1;
