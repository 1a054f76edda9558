-- Bounds on what callers write, so that no input can stop the work of others.
--
-- A job's tenant is at most 800 bytes (the client allows 200 characters, 4 bytes each at
-- most): the fair index on available jobs holds it, and a longer one could not be made
-- available (an index entry is at most 2,704 bytes), which would stop the stager's every
-- round behind it. This also covers jobs enqueued with `steward_enqueue` in SQL. Bytes, not
-- characters: that is what the index limits, and `octet_length` reads the stored length
-- without decoding the text. NOT VALID: rows written before are not read again.
ALTER TABLE steward_jobs
    ADD CONSTRAINT steward_jobs_tenant_length CHECK (octet_length(tenant) <= 800) NOT VALID;

-- A month's cost of a tenant module sums its usage entries (each at most 10,000, see
-- `store::data::check_usage`): wide enough that no number of entries overflows it.
ALTER TABLE tenant_module_monthly_cost ALTER COLUMN cost TYPE NUMERIC(28, 6);
