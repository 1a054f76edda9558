-- Enqueueing from SQL, in the caller's own transaction, from any language (as graphile-worker's
-- add_job): the one copy of the enqueue statement, which the Rust client calls too. Fair keys,
-- unique keys (a key held by a live job inserts nothing), and a NOTIFY at commit for a queue
-- that was empty, exactly as before. Its two arms differ only in the ON CONFLICT arbiter, which
-- a batch without unique keys skips (it costs a third of an insert); both are static, so
-- PL/pgSQL keeps their plans from call to call.
--
--   SELECT steward_enqueue('send_invoice', '{"invoice_id": 7}');            -- one job: its id
--   SELECT steward_enqueue('report', '{}', queue => 'reports', unique_key => 'report:2026-11');
--   SELECT * FROM steward_enqueue_many(kinds, queues, tenants, payloads, priorities,
--                                      max_attempts, timeout_ms, unique_keys, run_ats);
CREATE FUNCTION steward_enqueue_many(
    kinds text[], queues text[], tenants text[], payloads jsonb[], priorities int2[],
    max_attempts int4[], timeout_ms int8[], unique_keys text[], run_ats timestamptz[],
    notify boolean DEFAULT true)
RETURNS TABLE (id bigint, unique_key text, state text, queue text)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
BEGIN
    IF EXISTS (SELECT 1 FROM unnest($8) AS k WHERE k IS NOT NULL) THEN
        RETURN QUERY
        WITH input AS (
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::int2[], $6::int4[],
                                 $7::int8[], $8::text[], $9::timestamptz[])
                WITH ORDINALITY AS t(kind, queue, tenant, payload, priority, max_attempts, timeout_ms,
                                     unique_key, run_at, ord)
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
        )
        -- Only an enqueue into an empty queue needs to wake producers: a producer that fetched
        -- something fetches again before it waits (see queue/producer.rs). The notification is part of
        -- this statement, so it costs no round trip and is delivered when the enqueue commits; taking
        -- PostgreSQL's notification lock only for empty queues keeps busy enqueuers from serialising.
        SELECT i.id, i.unique_key, i.state, i.queue
        FROM inserted i
        CROSS JOIN (SELECT count(pg_notify('steward_jobs_' || current_schema(), w.queue)) AS woken
                      FROM groups w
                     WHERE w.was_empty AND $10
                       AND EXISTS (SELECT 1 FROM inserted n WHERE n.queue = w.queue AND n.state = 'available')
                   ) AS notified;
    ELSE
        RETURN QUERY
        WITH input AS (
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::int2[], $6::int4[],
                                 $7::int8[], $8::text[], $9::timestamptz[])
                WITH ORDINALITY AS t(kind, queue, tenant, payload, priority, max_attempts, timeout_ms,
                                     unique_key, run_at, ord)
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
        )
        -- Only an enqueue into an empty queue needs to wake producers: a producer that fetched
        -- something fetches again before it waits (see queue/producer.rs). The notification is part of
        -- this statement, so it costs no round trip and is delivered when the enqueue commits; taking
        -- PostgreSQL's notification lock only for empty queues keeps busy enqueuers from serialising.
        SELECT i.id, i.unique_key, i.state, i.queue
        FROM inserted i
        CROSS JOIN (SELECT count(pg_notify('steward_jobs_' || current_schema(), w.queue)) AS woken
                      FROM groups w
                     WHERE w.was_empty AND $10
                       AND EXISTS (SELECT 1 FROM inserted n WHERE n.queue = w.queue AND n.state = 'available')
                   ) AS notified;
    END IF;
END
$fn$;

-- One job, with the kind's usual settings passed by name when they differ from these
-- defaults (jobs/*.toml lives with the workers, not in the database). Returns the job's id,
-- or, when its unique key is held by a live job, that job's id.
CREATE FUNCTION steward_enqueue(
    kind text, payload jsonb DEFAULT '{}', queue text DEFAULT 'default', tenant text DEFAULT '',
    priority int2 DEFAULT 0, max_attempts int4 DEFAULT 20, timeout_ms int8 DEFAULT 60000,
    unique_key text DEFAULT NULL, run_at timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql AS $fn$
#variable_conflict use_variable
DECLARE
    job_id bigint;
BEGIN
    SELECT e.id INTO job_id
      FROM steward_enqueue_many(ARRAY[kind], ARRAY[queue], ARRAY[tenant], ARRAY[payload],
                                ARRAY[priority], ARRAY[max_attempts], ARRAY[timeout_ms],
                                ARRAY[unique_key], ARRAY[run_at]) AS e;
    IF job_id IS NULL AND unique_key IS NOT NULL THEN
        SELECT j.id INTO job_id FROM steward_jobs j
         WHERE j.unique_key = unique_key AND j.state <> 'cancelled';
    END IF;
    RETURN job_id;
END
$fn$;
