-- Enqueue a large batch in linear time. `steward_enqueue_many` woke producers in a subquery
-- cross-joined to the inserted rows; planned for the declared 100 input rows (0019), PostgreSQL
-- put it on the inner side of a nested loop and ran it again for every inserted row, each time
-- over every (queue, tenant, priority) group of the batch: a batch of N jobs of N tenants cost
-- N² (a 100,000-subscription insert, whose trigger (0012) enqueues one job per tenant, took
-- about an hour; 4,000 took 5.5 s). The wake-up is a materialized CTE now, computed once. The
-- statement is otherwise unchanged.
CREATE OR REPLACE FUNCTION steward_enqueue_many(
    kinds text[], queues text[], tenants text[], payloads jsonb[], priorities int2[],
    max_attempts int4[], timeout_ms int8[], unique_keys text[], run_ats timestamptz[],
    notify boolean DEFAULT true)
RETURNS TABLE (id bigint, unique_key text, state text, queue text)
LANGUAGE plpgsql
SET enable_seqscan = off
AS $fn$
#variable_conflict use_column
BEGIN
    IF cardinality(array_remove($8, NULL)) > 0 THEN
        RETURN QUERY
        WITH input AS (
            SELECT * FROM steward_enqueue_input($1, $2, $3, $4, $5, $6, $7, $8, $9)
        ),
        -- Fair keys. A tenant's jobs continue after its last available job, but never before the
        -- head of the queue, so a tenant arriving behind a flood starts at the head; within a batch
        -- each tenant's jobs are numbered on from its own base. Jobs without a tenant are first in,
        -- first out behind everything already waiting at their priority (and stay out of the fairness
        -- index, which keeps their enqueue cheaper).
        groups AS MATERIALIZED (
            SELECT g.queue, g.tenant, g.priority, h.head IS NULL AS was_empty,
                   greatest(coalesce(h.head, 0), coalesce(
                       CASE WHEN g.tenant = ''
                            THEN (SELECT t.fair_key FROM steward_jobs t
                                   WHERE t.state = 'available' AND t.queue = g.queue AND t.priority = g.priority
                                   ORDER BY t.fair_key DESC, t.id DESC LIMIT 1)
                            ELSE (SELECT max(t.fair_key) FROM steward_jobs t
                                   WHERE t.state = 'available' AND t.queue = g.queue AND t.tenant = g.tenant
                                     AND t.tenant <> '')
                       END, 0)) AS base
            FROM (SELECT DISTINCT queue, tenant, priority FROM input) g
            LEFT JOIN LATERAL (SELECT h.fair_key AS head FROM steward_jobs h
                                WHERE h.state = 'available' AND h.queue = g.queue
                                ORDER BY h.priority, h.fair_key, h.id LIMIT 1) h ON true
        ),
        inserted AS (
        INSERT INTO steward_jobs (kind, queue, tenant, payload, state, priority, fair_key, max_attempts,
                                  timeout_ms, unique_key, run_at)
        SELECT i.kind, i.queue, i.tenant, i.payload,
               CASE WHEN i.run_at IS NULL OR i.run_at <= now() THEN 'available' ELSE 'scheduled' END,
               i.priority,
               g.base + row_number() OVER (PARTITION BY i.queue, i.tenant, i.priority ORDER BY i.ord),
               i.max_attempts, i.timeout_ms, i.unique_key, coalesce(i.run_at, now())
        FROM input i JOIN groups g ON g.queue = i.queue AND g.tenant = i.tenant AND g.priority = i.priority
        ORDER BY i.ord
        ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state <> 'cancelled' DO NOTHING
        RETURNING id, unique_key, state, queue
        ),
        -- Only an enqueue into an empty queue needs to wake producers: a producer that fetched
        -- something fetches again before it waits (see queue/producer.rs). The notification is part of
        -- this statement, so it costs no round trip and is delivered when the enqueue commits; taking
        -- PostgreSQL's notification lock only for empty queues keeps busy enqueuers from serialising.
        notified AS MATERIALIZED (
            SELECT count(pg_notify('steward_jobs_' || current_schema(), w.queue)) AS woken
              FROM groups w
             WHERE w.was_empty AND $10
               AND EXISTS (SELECT 1 FROM inserted n WHERE n.queue = w.queue AND n.state = 'available')
        )
        SELECT i.id, i.unique_key, i.state, i.queue FROM inserted i CROSS JOIN notified;
    ELSE
        RETURN QUERY
        WITH input AS (
            SELECT * FROM steward_enqueue_input($1, $2, $3, $4, $5, $6, $7, $8, $9)
        ),
        -- Fair keys. A tenant's jobs continue after its last available job, but never before the
        -- head of the queue, so a tenant arriving behind a flood starts at the head; within a batch
        -- each tenant's jobs are numbered on from its own base. Jobs without a tenant are first in,
        -- first out behind everything already waiting at their priority (and stay out of the fairness
        -- index, which keeps their enqueue cheaper).
        groups AS MATERIALIZED (
            SELECT g.queue, g.tenant, g.priority, h.head IS NULL AS was_empty,
                   greatest(coalesce(h.head, 0), coalesce(
                       CASE WHEN g.tenant = ''
                            THEN (SELECT t.fair_key FROM steward_jobs t
                                   WHERE t.state = 'available' AND t.queue = g.queue AND t.priority = g.priority
                                   ORDER BY t.fair_key DESC, t.id DESC LIMIT 1)
                            ELSE (SELECT max(t.fair_key) FROM steward_jobs t
                                   WHERE t.state = 'available' AND t.queue = g.queue AND t.tenant = g.tenant
                                     AND t.tenant <> '')
                       END, 0)) AS base
            FROM (SELECT DISTINCT queue, tenant, priority FROM input) g
            LEFT JOIN LATERAL (SELECT h.fair_key AS head FROM steward_jobs h
                                WHERE h.state = 'available' AND h.queue = g.queue
                                ORDER BY h.priority, h.fair_key, h.id LIMIT 1) h ON true
        ),
        inserted AS (
        INSERT INTO steward_jobs (kind, queue, tenant, payload, state, priority, fair_key, max_attempts,
                                  timeout_ms, unique_key, run_at)
        SELECT i.kind, i.queue, i.tenant, i.payload,
               CASE WHEN i.run_at IS NULL OR i.run_at <= now() THEN 'available' ELSE 'scheduled' END,
               i.priority,
               g.base + row_number() OVER (PARTITION BY i.queue, i.tenant, i.priority ORDER BY i.ord),
               i.max_attempts, i.timeout_ms, i.unique_key, coalesce(i.run_at, now())
        FROM input i JOIN groups g ON g.queue = i.queue AND g.tenant = i.tenant AND g.priority = i.priority
        ORDER BY i.ord

        RETURNING id, unique_key, state, queue
        ),
        -- Only an enqueue into an empty queue needs to wake producers: a producer that fetched
        -- something fetches again before it waits (see queue/producer.rs). The notification is part of
        -- this statement, so it costs no round trip and is delivered when the enqueue commits; taking
        -- PostgreSQL's notification lock only for empty queues keeps busy enqueuers from serialising.
        notified AS MATERIALIZED (
            SELECT count(pg_notify('steward_jobs_' || current_schema(), w.queue)) AS woken
              FROM groups w
             WHERE w.was_empty AND $10
               AND EXISTS (SELECT 1 FROM inserted n WHERE n.queue = w.queue AND n.state = 'available')
        )
        SELECT i.id, i.unique_key, i.state, i.queue FROM inserted i CROSS JOIN notified;
    END IF;
END
$fn$;
