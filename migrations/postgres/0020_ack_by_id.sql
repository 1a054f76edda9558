-- The acknowledgement finds its jobs by primary key. With nested loops off (0018) the batch was
-- hashed and probed once per running job, the running jobs read through their partial index;
-- under a large backlog that index also carries the entries of every job acknowledged since
-- the last vacuum, so each acknowledgement read more of them as the run went on:
-- `execute_noop` at 1,000,000 jobs ran at 39k jobs/s against 61k at 50,000 (BENCHMARKS.md,
-- issue #18). Now the only access path left is the primary key with the batch's ids
-- (`id = ANY`): the state is tested as `state || ''`, which no partial index's predicate
-- matches, and sequential and bitmap scans are off. The work is the batch's index probes,
-- whatever the backlog, the dead entries or the statistics.
CREATE OR REPLACE FUNCTION steward_ack(ids int8[], attempts int4[], finished timestamptz[], worker text)
RETURNS TABLE (id bigint, attempt int4)
LANGUAGE plpgsql
SET enable_nestloop = off
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH done AS (
        DELETE FROM steward_jobs j
        USING unnest(ids, attempts, finished) AS c(id, attempt, finished_at)
        WHERE j.id = ANY(ids) AND j.id = c.id AND j.attempt = c.attempt
          AND j.state || '' = 'running' AND j.leased_by = worker
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
