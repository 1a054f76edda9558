-- The fetch, as a function whose plan does not depend on the planner's statistics. As a plain
-- statement its plan followed them: a queue that filled faster than autovacuum analyses it
-- (a burst into an idle deployment, a backlog enqueued at once) was estimated at a handful of
-- available jobs, so the head was taken by reading every available job through a bitmap scan
-- and sorting them (600–700 ms per fetch at 1,000,000 jobs, spilling to disk, until the next
-- autoanalyze). Without bitmap scans and sorts, the only plan left walks the fetch index in
-- order and stops at the limit, whatever the statistics say.
--
-- It starts after a position (`after_*`: priority, fair key and id of the last job the caller's
-- previous fetch took; the lowest values for the head): the index keeps the entries of jobs
-- already taken until vacuum removes them, and a fetch from the head walks all of them (5,400
-- index pages, 14 ms, after 900,000 jobs taken). The producer goes back to the head after a
-- fetch that found fewer jobs than it asked for and at least every 250 ms, so that jobs made
-- available behind its position (retried, staged, of a higher priority) wait no longer than
-- that. BENCHMARKS.md, issue #18.
CREATE FUNCTION steward_fetch(queue_name text, max_jobs int8, worker text, lease_ms int8,
                              after_priority int2, after_fair_key int8, after_id int8)
RETURNS TABLE (id bigint, kind text, queue text, tenant text, payload jsonb, priority int2,
               fair_key int8, attempt int4, max_attempts int4, timeout_ms int8)
LANGUAGE plpgsql
SET enable_bitmapscan = off
SET enable_sort = off
AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH picked AS (
        SELECT a.id FROM steward_jobs a
        WHERE a.state = 'available' AND a.queue = queue_name
          AND (a.priority, a.fair_key, a.id) > (after_priority, after_fair_key, after_id)
          AND NOT EXISTS (SELECT 1 FROM steward_queue_states p
                          WHERE p.queue = queue_name AND p.paused)
        ORDER BY a.priority, a.fair_key, a.id
        LIMIT max_jobs
        FOR UPDATE SKIP LOCKED
    )
    UPDATE steward_jobs j
    SET state = 'running', attempt = j.attempt + 1, leased_by = worker, attempted_at = now(),
        lease_expires_at = now() + lease_ms * interval '1 millisecond'
    FROM picked WHERE j.id = picked.id
    RETURNING j.id, j.kind, j.queue, j.tenant, j.payload, j.priority, j.fair_key,
              j.attempt, j.max_attempts, j.timeout_ms;
END
$fn$;
