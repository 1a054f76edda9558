//! Plan-module sync, written once for both backends: [`SCOPE`] and [`WANTED`] are the one
//! statement of its rule (which tenant gets which module at which version, and who is
//! skipped), with the maturities and statuses it admits bound from the rules of
//! `crate::domain` rather than restated in SQL. Only how the answer is written differs:
//! PostgreSQL inserts, audits and counts in the same statement (data-modifying CTEs, one pass
//! over 100,000 tenants); SQLite, which has none, goes through two temporary tables under
//! its write lock.

use crate::domain::availability::granted_by_plans;
use crate::domain::maturity::Maturity;
use crate::domain::status::TenantModuleStatus;
use crate::store::StoreResult;
use crate::store::domain::PlanSynced;
use crate::store::sql::{Conn, Dialect, sql};

/// The (plan, module) pairs in scope, a handful: each with the version a new tenant gets (the
/// one installed in this database, else the latest), and whether its maturity lets every
/// subscriber in (`open_to_all`) or only the tenants that opted in to betas. `$1`, `$2`: the
/// plan and module asked for (or all); `$3`: the maturities plan sync grants at, `$4` those
/// it grants to every subscriber ([`granted_by_plans`]).
const SCOPE: &str = "\
    SELECT p.id AS plan_id, p.slug AS plan, pm.module, m.dependencies, \
           m.maturity = ANY($4) AS open_to_all, \
           NOT EXISTS (SELECT 1 FROM {json_each}(m.dependencies) d) AS independent, \
           (SELECT v.id FROM core_module_versions v WHERE v.module = pm.module \
            ORDER BY v.migrated_at IS NULL, v.major DESC, v.minor DESC, v.patch DESC \
            LIMIT 1) AS version_id \
    FROM plans p \
    JOIN plan_modules pm ON pm.plan_id = p.id \
    JOIN core_modules m ON m.slug = pm.module \
    WHERE (CAST($1 AS TEXT) IS NULL OR p.slug = $1) \
      AND (CAST($2 AS TEXT) IS NULL OR pm.module = $2) AND m.maturity = ANY($3)";

/// The (plan, tenant, module) rows active subscriptions call for (a tenant subscribed twice to
/// one plan appears twice: counted once). `dependencies_enabled`: every module this one depends
/// on satisfies the dependency for the tenant (`$5`:
/// [`TenantModuleStatus::satisfies_dependency`]), else the tenant is skipped. `present`: the
/// tenant has the module already (in any status), and it is left as it is.
const WANTED: &str = "\
    SELECT c.plan, s.tenant_id, c.module, c.version_id, \
           (c.independent OR NOT EXISTS ( \
               SELECT 1 FROM {json_each}(c.dependencies) d \
               WHERE NOT EXISTS (SELECT 1 FROM tenant_modules dm \
                                 WHERE dm.tenant_id = s.tenant_id AND dm.module = d.value \
                                   AND dm.status = ANY($5)))) AS dependencies_enabled, \
           EXISTS (SELECT 1 FROM tenant_modules tm \
                   WHERE tm.tenant_id = s.tenant_id AND tm.module = c.module) AS present \
    FROM scope c \
    JOIN subscriptions s ON s.plan_id = c.plan_id \
    WHERE s.status = 'active' AND (s.expires_at IS NULL OR s.expires_at > {now}) \
      AND (c.open_to_all \
           OR EXISTS (SELECT 1 FROM tenants t WHERE t.id = s.tenant_id AND t.beta_opt_in))";

/// PostgreSQL: the inserts of the wanted rows the tenant does not have yet, their audit rows
/// and the summary per plan and module, in the statement that computes them. It runs holding
/// `tenant_modules` against other writers, so "not present" stays true until the insert: no
/// `ON CONFLICT` arbiter (speculative insertion costs an eighth of the statement at 100,000
/// tenants).
const WRITE_POSTGRES: &str = "\
    inserted AS ( \
        INSERT INTO tenant_modules (tenant_id, module, status, version_id, status_reason) \
        SELECT DISTINCT ON (w.tenant_id, w.module) w.tenant_id, w.module, 'PROVISIONING', \
               w.version_id, 'added by plan ' || w.plan \
        FROM wanted w \
        WHERE w.dependencies_enabled AND NOT w.present AND w.version_id IS NOT NULL \
        ORDER BY w.tenant_id, w.module, w.plan \
        RETURNING tenant_id, module, substr(status_reason, 15) AS plan \
    ), audited AS ( \
        INSERT INTO audit_logs (actor, action, tenant_id, module, entity, after) \
        SELECT $6, 'plan.sync', tenant_id, module, 'tenant_module', \
               '{\"status\": \"PROVISIONING\"}'::jsonb \
        FROM inserted \
    ), synced AS ( \
        SELECT plan, module, count(*) AS n FROM inserted GROUP BY plan, module \
    ), counted AS ( \
        SELECT plan, module, count(DISTINCT tenant_id) AS subscribed, \
               count(DISTINCT tenant_id) FILTER (WHERE NOT dependencies_enabled AND NOT present) \
                   AS skipped \
        FROM wanted GROUP BY plan, module \
    ) \
    SELECT c.plan, c.module, coalesce(y.n, 0) AS synced, c.subscribed, c.skipped \
    FROM counted c LEFT JOIN synced y ON y.plan = c.plan AND y.module = c.module \
    ORDER BY c.plan, c.module";

/// SQLite: the wanted rows, and the new ones (one plan per tenant and module), in temporary
/// tables; then the inserts, their audit rows and the summary.
const WRITE_SQLITE: [&str; 7] = [
    "CREATE TEMP TABLE IF NOT EXISTS steward_sync_wanted (plan TEXT, tenant_id INTEGER, \
         module TEXT, version_id INTEGER, dependencies_enabled INTEGER, present INTEGER)",
    "CREATE TEMP TABLE IF NOT EXISTS steward_sync_new (tenant_id INTEGER, module TEXT, \
         version_id INTEGER, plan TEXT)",
    "DELETE FROM temp.steward_sync_wanted",
    "DELETE FROM temp.steward_sync_new",
    "INSERT INTO temp.steward_sync_new (tenant_id, module, version_id, plan) \
     SELECT tenant_id, module, min(version_id), min(plan) FROM temp.steward_sync_wanted \
     WHERE dependencies_enabled AND NOT present AND version_id IS NOT NULL \
     GROUP BY tenant_id, module",
    "INSERT INTO tenant_modules (tenant_id, module, status, version_id, status_reason) \
     SELECT tenant_id, module, 'PROVISIONING', version_id, 'added by plan ' || plan \
     FROM temp.steward_sync_new",
    "INSERT INTO audit_logs (actor, action, tenant_id, module, entity, after) \
     SELECT $1, 'plan.sync', tenant_id, module, 'tenant_module', '{\"status\":\"PROVISIONING\"}' \
     FROM temp.steward_sync_new",
];

const SUMMARY_SQLITE: &str = "\
    WITH subscribed AS ( \
        SELECT plan, module, count(DISTINCT tenant_id) AS n, \
               count(DISTINCT CASE WHEN NOT dependencies_enabled AND NOT present \
                                   THEN tenant_id END) AS skipped \
        FROM temp.steward_sync_wanted GROUP BY plan, module), \
    synced AS (SELECT plan, module, count(*) AS n FROM temp.steward_sync_new \
               GROUP BY plan, module) \
    SELECT s.plan, s.module, coalesce(y.n, 0) AS synced, s.n AS subscribed, s.skipped \
    FROM subscribed s LEFT JOIN synced y ON y.plan = s.plan AND y.module = s.module \
    ORDER BY s.plan, s.module";

/// Run plan sync on the caller's write transaction (see
/// [`crate::store::DomainStore::plan_sync`]).
pub(super) async fn plan_sync(
    conn: &mut dyn Conn,
    plan: Option<&str>,
    module: Option<&str>,
    actor: &str,
) -> StoreResult<Vec<PlanSynced>> {
    let (granted, open_to_all) = granted_by_plans();
    let names = |list: &[Maturity]| {
        list.iter()
            .map(|m| m.as_str().to_string())
            .collect::<Vec<_>>()
    };
    let satisfying: Vec<String> = TenantModuleStatus::ALL
        .iter()
        .filter(|s| s.satisfies_dependency())
        .map(|s| s.as_str().to_string())
        .collect();
    let rule = |text: String| {
        sql!(text, plan, module, names(&granted), names(&open_to_all)).arg(satisfying.clone())
    };
    let rows = match conn.dialect() {
        Dialect::Postgres => {
            // Sorting and counting 100,000 pairs in memory rather than in temporary files;
            // other writers of tenant_modules (a tenant's own request, a provisioning step)
            // wait for the sync's commit, a second at 100,000 tenants; readers do not.
            conn.execute(sql!("SET LOCAL work_mem = '32MB'")).await?;
            conn.execute(sql!(
                "LOCK TABLE tenant_modules IN SHARE ROW EXCLUSIVE MODE"
            ))
            .await?;
            let statement = format!(
                "WITH scope AS MATERIALIZED ({SCOPE}), wanted AS MATERIALIZED ({WANTED}), \
                 {WRITE_POSTGRES}"
            );
            conn.fetch_all(rule(statement).arg(actor)).await?
        }
        Dialect::Sqlite => {
            let [
                create_wanted,
                create_new,
                clear_wanted,
                clear_new,
                new,
                insert,
                audit,
            ] = WRITE_SQLITE;
            for statement in [create_wanted, create_new, clear_wanted, clear_new] {
                conn.execute(sql!(statement)).await?;
            }
            let wanted = format!(
                "INSERT INTO temp.steward_sync_wanted \
                 WITH scope AS ({SCOPE}) {WANTED}"
            );
            conn.execute(rule(wanted)).await?;
            conn.execute(sql!(new)).await?;
            conn.execute(sql!(insert)).await?;
            conn.execute(sql!(audit, actor)).await?;
            let rows = conn.fetch_all(sql!(SUMMARY_SQLITE)).await?;
            for statement in [clear_wanted, clear_new] {
                conn.execute(sql!(statement)).await?;
            }
            rows
        }
    };
    rows.iter()
        .map(|row| {
            Ok(PlanSynced::from_row((
                row.text("plan")?,
                row.text("module")?,
                row.int("synced")?,
                row.int("subscribed")?,
                row.int("skipped")?,
            )))
        })
        .collect()
}
