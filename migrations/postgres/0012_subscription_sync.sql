-- A subscription that becomes active gets its plan's modules at once (seed 004 syncs only when
-- a plan changes): statement-level triggers enqueue, in the statement's own transaction, one
-- `plan_subscribed` job per tenant and plan that turned active, through steward_enqueue_many
-- (one call whatever the number of rows; a unique key per tenant and plan). The job syncs the
-- plan and starts the tenant's provisioning runs (src/lifecycle/subscriptions.rs). Cancelling
-- or expiring a subscription enqueues nothing and removes nothing.
CREATE FUNCTION steward_subscriptions_enqueue(activated bigint[], plan_ids bigint[])
RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM count(*) FROM steward_enqueue_many(
        (SELECT array_agg('plan_subscribed'::text) FROM unnest(activated)),
        (SELECT array_agg('lifecycle'::text) FROM unnest(activated)),
        (SELECT array_agg(t::text) FROM unnest(activated) AS t),
        (SELECT array_agg(jsonb_build_object('tenant_id', a.t, 'plan', p.slug) ORDER BY a.ord)
           FROM unnest(activated, plan_ids) WITH ORDINALITY AS a(t, plan_id, ord)
           JOIN plans p ON p.id = a.plan_id),
        (SELECT array_agg(0::int2) FROM unnest(activated)),
        (SELECT array_agg(10) FROM unnest(activated)),
        (SELECT array_agg(60000::int8) FROM unnest(activated)),
        (SELECT array_agg('plan_subscribed:' || a.t || ':' || a.plan_id ORDER BY a.ord)
           FROM unnest(activated, plan_ids) WITH ORDINALITY AS a(t, plan_id, ord)),
        (SELECT array_agg(NULL::timestamptz) FROM unnest(activated)));
END
$fn$;

CREATE FUNCTION steward_subscriptions_inserted() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    tenants bigint[];
    plan_ids bigint[];
BEGIN
    SELECT array_agg(tenant_id), array_agg(plan_id) INTO tenants, plan_ids
      FROM (SELECT DISTINCT n.tenant_id, n.plan_id FROM new_rows n WHERE n.status = 'active') a;
    IF tenants IS NOT NULL THEN
        PERFORM steward_subscriptions_enqueue(tenants, plan_ids);
    END IF;
    RETURN NULL;
END
$fn$;

CREATE FUNCTION steward_subscriptions_updated() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    tenants bigint[];
    plan_ids bigint[];
BEGIN
    SELECT array_agg(tenant_id), array_agg(plan_id) INTO tenants, plan_ids
      FROM (SELECT DISTINCT n.tenant_id, n.plan_id
              FROM new_rows n JOIN old_rows o ON o.id = n.id
             WHERE n.status = 'active' AND (o.status <> 'active' OR o.plan_id <> n.plan_id)) a;
    IF tenants IS NOT NULL THEN
        PERFORM steward_subscriptions_enqueue(tenants, plan_ids);
    END IF;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER steward_subscriptions_inserted AFTER INSERT ON subscriptions
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION steward_subscriptions_inserted();
CREATE TRIGGER steward_subscriptions_updated AFTER UPDATE ON subscriptions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION steward_subscriptions_updated();
