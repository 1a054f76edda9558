-- The job kinds' defaults (queue, priority, attempts, timeout), as `jobs/*.toml` declares
-- them, published by every worker runtime at start (`JobAdmin::kinds_publish`), so that an
-- enqueue from SQL gets what the Rust client and the API give a kind: `steward_enqueue` takes
-- the kind's queue, priority, attempts and timeout unless the caller names them. A kind no
-- runtime has published yet gets the old defaults ('default', 0, 20, 60 s).
CREATE TABLE steward_kinds (
    kind         text        PRIMARY KEY,
    queue        text        NOT NULL,
    priority     int2        NOT NULL,
    max_attempts int4        NOT NULL,
    timeout_ms   int8        NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

DROP FUNCTION steward_enqueue(text, jsonb, text, text, int2, int4, int8, text, timestamptz);

CREATE FUNCTION steward_enqueue(
    kind text, payload jsonb DEFAULT '{}', queue text DEFAULT NULL, tenant text DEFAULT '',
    priority int2 DEFAULT NULL, max_attempts int4 DEFAULT NULL, timeout_ms int8 DEFAULT NULL,
    unique_key text DEFAULT NULL, run_at timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql AS $fn$
#variable_conflict use_variable
DECLARE
    job_id bigint;
    declared steward_kinds%ROWTYPE;
BEGIN
    SELECT * INTO declared FROM steward_kinds k WHERE k.kind = kind;
    SELECT e.id INTO job_id
      FROM steward_enqueue_many(
               ARRAY[kind],
               ARRAY[coalesce(queue, declared.queue, 'default')],
               ARRAY[tenant], ARRAY[payload],
               ARRAY[coalesce(priority, declared.priority, 0::int2)],
               ARRAY[coalesce(max_attempts, declared.max_attempts, 20)],
               ARRAY[coalesce(timeout_ms, declared.timeout_ms, 60000::int8)],
               ARRAY[unique_key], ARRAY[run_at]) AS e;
    IF job_id IS NULL AND unique_key IS NOT NULL THEN
        SELECT j.id INTO job_id FROM steward_jobs j
         WHERE j.unique_key = unique_key AND j.state <> 'cancelled';
    END IF;
    RETURN job_id;
END
$fn$;

-- Many jobs of declared kinds at once, each with the kind's defaults: the batch form for
-- callers that do not spell out every column (`steward_enqueue_many` takes them all).
CREATE FUNCTION steward_enqueue_kinds(
    kinds text[], payloads jsonb[], tenants text[] DEFAULT NULL, unique_keys text[] DEFAULT NULL,
    run_ats timestamptz[] DEFAULT NULL)
RETURNS TABLE (id bigint, unique_key text, state text, queue text)
LANGUAGE sql AS $fn$
    WITH input AS (
        SELECT i.kind, i.payload, i.ord, coalesce(t.tenant, '') AS tenant, u.unique_key, r.run_at,
               coalesce(k.queue, 'default') AS queue, coalesce(k.priority, 0::int2) AS priority,
               coalesce(k.max_attempts, 20) AS max_attempts,
               coalesce(k.timeout_ms, 60000::int8) AS timeout_ms
          FROM unnest(kinds, payloads) WITH ORDINALITY AS i(kind, payload, ord)
          LEFT JOIN unnest(tenants) WITH ORDINALITY AS t(tenant, ord) ON t.ord = i.ord
          LEFT JOIN unnest(unique_keys) WITH ORDINALITY AS u(unique_key, ord) ON u.ord = i.ord
          LEFT JOIN unnest(run_ats) WITH ORDINALITY AS r(run_at, ord) ON r.ord = i.ord
          LEFT JOIN steward_kinds k ON k.kind = i.kind
    )
    SELECT e.* FROM steward_enqueue_many(
        ARRAY(SELECT x.kind FROM input x ORDER BY x.ord), ARRAY(SELECT x.queue FROM input x ORDER BY x.ord),
        ARRAY(SELECT x.tenant FROM input x ORDER BY x.ord), ARRAY(SELECT x.payload FROM input x ORDER BY x.ord),
        ARRAY(SELECT x.priority FROM input x ORDER BY x.ord),
        ARRAY(SELECT x.max_attempts FROM input x ORDER BY x.ord),
        ARRAY(SELECT x.timeout_ms FROM input x ORDER BY x.ord),
        ARRAY(SELECT x.unique_key FROM input x ORDER BY x.ord),
        ARRAY(SELECT x.run_at FROM input x ORDER BY x.ord)) AS e
$fn$;
