-- The acknowledgement of a batch of completed attempts, as a function whose plan is linear in
-- the batch whatever the statistics say. As a prepared statement it went, after five runs, to
-- a generic plan that started from the running jobs' partial index (estimated at one row, its
-- size at the last ANALYZE) and rescanned the batch's arrays for every running job: 100–450 ms
-- for 1,000 jobs under a steady enqueue load. Without nested loops, the batch is hashed and
-- each running job probes it once. BENCHMARKS.md, issue #18.
CREATE FUNCTION steward_ack(ids int8[], attempts int4[], finished timestamptz[], worker text)
RETURNS TABLE (id bigint, attempt int4)
LANGUAGE plpgsql
SET enable_nestloop = off
AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH done AS (
        DELETE FROM steward_jobs j
        USING unnest(ids, attempts, finished) AS c(id, attempt, finished_at)
        WHERE j.id = c.id AND j.attempt = c.attempt AND j.state = 'running' AND j.leased_by = worker
        RETURNING j.id, j.kind, j.queue, j.tenant, j.payload, j.priority, j.attempt,
                  j.max_attempts, j.timeout_ms, j.unique_key, j.run_at, j.created_at,
                  j.attempted_at, j.leased_by, c.finished_at AS done_at, j.errors
    )
    INSERT INTO steward_jobs_completed AS k (id, kind, queue, tenant, payload, priority, attempt,
        max_attempts, timeout_ms, unique_key, run_at, created_at, attempted_at, leased_by,
        finished_at, errors)
    SELECT d.id, d.kind, d.queue, d.tenant, d.payload, d.priority, d.attempt, d.max_attempts,
           d.timeout_ms, d.unique_key, d.run_at, d.created_at, d.attempted_at, d.leased_by,
           d.done_at, d.errors
    FROM done d
    RETURNING k.id, k.attempt;
END
$fn$;
