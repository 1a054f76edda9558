//! PostgreSQL implementation of [`DomainStore`].

use crate::domain::DomainError;
use crate::domain::ident::{ModuleTable, Slug, quote_ident};
use crate::domain::maturity::Maturity;
use crate::domain::status::TenantModuleStatus;
use crate::store::domain::{
    AuditRecord, DomainStore, MigrationReport, ModuleRecord, ModuleRequest, NewTenant, NewVersion,
    PlanSynced, RollbackPlan, StatusChange, TenantId, TenantModuleRecord, TenantRecord,
    VersionRecord, check_request_refers, check_seed_count, check_version, io_error, rows_as_seen,
};
use crate::store::migration::{MigrationPlan, VersionSql, as_migration_error};
use crate::store::postgres::PgStore;
use crate::store::{StoreError, StoreResult};
use async_trait::async_trait;
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgRow};

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

const TENANT_COLUMNS: &str =
    "id, slug, name, internal_tester, beta_opt_in, webhook_url, created_at";
const MODULE_COLUMNS: &str = "slug, name, description, pricing_tier, maturity, dependencies, \
     data_retention_days, successor, sunset_date::text AS sunset_date";
const VERSION_COLUMNS: &str =
    "id, module, version, major, tables_created, settings_schema, migrated_at";
const TENANT_MODULE_COLUMNS: &str = "tenant_id, module, status, version_id, previous_version_id, status_reason, requested_at, \
     updated_at, disabled_from, upgraded_at";

fn tenant_from(row: &PgRow) -> StoreResult<TenantRecord> {
    Ok(TenantRecord {
        id: row.try_get("id")?,
        slug: row.try_get("slug")?,
        name: row.try_get("name")?,
        internal_tester: row.try_get("internal_tester")?,
        beta_opt_in: row.try_get("beta_opt_in")?,
        webhook_url: row.try_get("webhook_url")?,
        created_at: row.try_get("created_at")?,
    })
}

fn module_from(row: &PgRow) -> StoreResult<ModuleRecord> {
    let maturity: String = row.try_get("maturity")?;
    let dependencies: Value = row.try_get("dependencies")?;
    Ok(ModuleRecord {
        slug: row.try_get("slug")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        pricing_tier: row.try_get("pricing_tier")?,
        maturity: maturity.parse().map_err(corrupt)?,
        dependencies: serde_json::from_value(dependencies).map_err(corrupt)?,
        data_retention_days: row.try_get("data_retention_days")?,
        successor: row.try_get("successor")?,
        sunset_date: row.try_get("sunset_date")?,
    })
}

fn version_from(row: &PgRow) -> StoreResult<VersionRecord> {
    let tables: Value = row.try_get("tables_created")?;
    Ok(VersionRecord {
        id: row.try_get("id")?,
        module: row.try_get("module")?,
        version: row.try_get("version")?,
        major: row.try_get("major")?,
        tables_created: serde_json::from_value(tables).map_err(corrupt)?,
        settings_schema: row.try_get("settings_schema")?,
        migrated_at: row.try_get("migrated_at")?,
    })
}

fn tenant_module_from(row: &PgRow) -> StoreResult<TenantModuleRecord> {
    let status: String = row.try_get("status")?;
    Ok(TenantModuleRecord {
        tenant_id: row.try_get("tenant_id")?,
        module: row.try_get("module")?,
        status: status.parse().map_err(corrupt)?,
        version_id: row.try_get("version_id")?,
        previous_version_id: row.try_get("previous_version_id")?,
        status_reason: row.try_get("status_reason")?,
        disabled_from: row
            .try_get::<Option<String>, _>("disabled_from")?
            .map(|s| s.parse())
            .transpose()
            .map_err(corrupt)?,
        upgraded_at: row.try_get("upgraded_at")?,
        requested_at: row.try_get("requested_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// One audit row, on the caller's transaction.
#[allow(clippy::too_many_arguments)]
async fn audit(
    conn: &mut PgConnection,
    actor: &str,
    action: &str,
    tenant_id: Option<TenantId>,
    module: Option<&str>,
    entity: &str,
    before: Option<Value>,
    after: Option<Value>,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO audit_logs (actor, action, tenant_id, module, entity, before, after) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(actor)
    .bind(action)
    .bind(tenant_id)
    .bind(module)
    .bind(entity)
    .bind(before)
    .bind(after)
    .execute(conn)
    .await?;
    Ok(())
}

/// Plan-module sync in one statement: the (tenant, module) pairs active subscriptions call
/// for, the version each module is installed at (else its latest), the inserts (existing
/// rows untouched), their audit rows, and the summary per plan and module.
const PLAN_SYNC: &str = r#"
WITH wanted AS (
    -- (A tenant subscribed twice to one plan appears twice: counted once below.)
    -- `dependencies_enabled`: every module this one depends on is ENABLED or UP_TO_DATE for
    -- the tenant (domain::status::satisfies_dependency); otherwise the tenant is skipped.
    SELECT p.slug AS plan, s.tenant_id, pm.module,
           NOT EXISTS (SELECT 1 FROM jsonb_array_elements_text(m.dependencies) d(dep)
                       WHERE NOT EXISTS (SELECT 1 FROM tenant_modules dm
                                         WHERE dm.tenant_id = s.tenant_id AND dm.module = d.dep
                                           AND dm.status IN ('ENABLED', 'UP_TO_DATE'))
           ) AS dependencies_enabled
    FROM subscriptions s
    JOIN plans p ON p.id = s.plan_id
    JOIN plan_modules pm ON pm.plan_id = p.id
    JOIN core_modules m ON m.slug = pm.module
    JOIN tenants t ON t.id = s.tenant_id
    WHERE s.status = 'active' AND (s.expires_at IS NULL OR s.expires_at > now())
      AND ($1::text IS NULL OR p.slug = $1) AND ($2::text IS NULL OR pm.module = $2)
      AND (m.maturity IN ('RC', 'GA', 'MAINTENANCE') OR (m.maturity = 'BETA' AND t.beta_opt_in))
), version AS (
    SELECT DISTINCT ON (module) module, id FROM core_module_versions
    ORDER BY module, migrated_at IS NULL, major DESC, minor DESC, patch DESC
), inserted AS (
    INSERT INTO tenant_modules (tenant_id, module, status, version_id, status_reason)
    SELECT DISTINCT ON (w.tenant_id, w.module) w.tenant_id, w.module, 'PROVISIONING', v.id,
           'added by plan ' || w.plan
    FROM wanted w JOIN version v ON v.module = w.module
    WHERE w.dependencies_enabled
    ORDER BY w.tenant_id, w.module, w.plan
    ON CONFLICT (tenant_id, module) DO NOTHING
    RETURNING tenant_id, module, substr(status_reason, 15) AS plan
), audited AS (
    INSERT INTO audit_logs (actor, action, tenant_id, module, entity, after)
    SELECT $3, 'plan.sync', tenant_id, module, 'tenant_module', '{"status": "PROVISIONING"}'::jsonb
    FROM inserted
), synced AS (
    SELECT plan, module, count(*) AS n FROM inserted GROUP BY plan, module
), skipped AS (
    SELECT plan, module, count(DISTINCT tenant_id) AS n FROM wanted w
    WHERE NOT w.dependencies_enabled
      AND NOT EXISTS (SELECT 1 FROM tenant_modules tm WHERE tm.tenant_id = w.tenant_id AND tm.module = w.module)
    GROUP BY plan, module
), subscribed AS (
    SELECT plan, module, count(DISTINCT tenant_id) AS n FROM wanted GROUP BY plan, module
)
-- Aggregates joined, never the 100,000-row sets (a CTE has no index to join on).
SELECT s.plan, s.module, coalesce(y.n, 0) AS synced, s.n AS subscribed, coalesce(k.n, 0) AS skipped
FROM subscribed s LEFT JOIN synced y ON y.plan = s.plan AND y.module = s.module
LEFT JOIN skipped k ON k.plan = s.plan AND k.module = s.module
ORDER BY s.plan, s.module
"#;

async fn plan_exists(conn: &mut PgConnection, plan: &str) -> StoreResult<()> {
    let found: Option<i64> = sqlx::query_scalar("SELECT id FROM plans WHERE slug = $1")
        .bind(plan)
        .fetch_optional(&mut *conn)
        .await?;
    found
        .map(|_| ())
        .ok_or_else(|| StoreError::InvalidInput(format!("no plan `{plan}`")))
}

/// A plan-module insert refused by a foreign key names what is missing.
fn plan_error(err: sqlx::Error, plan: &str, module: &str) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::InvalidInput(
            format!("no module `{module}` in the catalog (plan `{plan}`)"),
        ),
        _ => err.into(),
    }
}

fn snapshot(record: &TenantModuleRecord) -> Value {
    json!({"status": record.status, "version_id": record.version_id, "reason": record.status_reason})
}

/// Move a tenant module's status on the caller's transaction: locked, checked against the
/// rules (and `change.from`), updated and audited. Shared by [`DomainStore`] and the step
/// transactions of the lifecycle workflows.
pub(super) async fn move_status(
    conn: &mut PgConnection,
    change: &StatusChange<'_>,
) -> StoreResult<TenantModuleRecord> {
    let current = sqlx::query(&format!(
            "SELECT {TENANT_MODULE_COLUMNS} FROM tenant_modules WHERE tenant_id = $1 AND module = $2 FOR UPDATE"
        ))
        .bind(change.tenant_id)
        .bind(change.module)
        .fetch_optional(&mut *conn)
        .await?
        .as_ref()
        .map(tenant_module_from)
        .transpose()?
        .ok_or_else(|| {
            StoreError::InvalidInput(format!(
                "tenant {} has no module `{}`",
                change.tenant_id, change.module
            ))
        })?;
    if change.from.is_some_and(|from| from != current.status) {
        return Err(DomainError::InvalidTransition {
            what: "tenant module (it moved meanwhile)",
            from: current.status.as_str(),
            to: change.to.as_str(),
        }
        .into());
    }
    if change
        .unchanged_since
        .is_some_and(|at| at.timestamp_micros() != current.updated_at.timestamp_micros())
    {
        return Err(DomainError::InvalidTransition {
            what: "tenant module (it changed since it was read)",
            from: current.status.as_str(),
            to: change.to.as_str(),
        }
        .into());
    }
    current.status.check_move(change.to)?;
    catch_up(&mut *conn, change).await?;
    let row = sqlx::query(&format!(
            "UPDATE tenant_modules SET status = $3, status_reason = $4, updated_at = now(), \
                 disabled_from = CASE WHEN $3 = 'DISABLED' THEN status ELSE NULL END, \
                 provisioning = coalesce($5, provisioning), \
                 previous_version_id = CASE WHEN $6::int8 IS NULL THEN previous_version_id ELSE version_id END, \
                 version_id = coalesce($6, version_id), \
                 upgraded_at = CASE WHEN $6::int8 IS NULL THEN upgraded_at ELSE now() END, \
                 enabled_at = CASE WHEN $3 = 'ENABLED' AND enabled_at IS NULL THEN now() ELSE enabled_at END \
             WHERE tenant_id = $1 AND module = $2 RETURNING {TENANT_MODULE_COLUMNS}"
        ))
        .bind(change.tenant_id)
        .bind(change.module)
        .bind(change.to.as_str())
        .bind(change.reason)
        .bind(change.provisioning)
        .bind(change.set_version)
        .fetch_one(&mut *conn)
        .await?;
    let record = tenant_module_from(&row)?;
    audit(
        &mut *conn,
        change.actor,
        change.action,
        Some(change.tenant_id),
        Some(change.module),
        "tenant_module",
        Some(snapshot(&current)),
        Some(snapshot(&record)),
    )
    .await?;
    Ok(record)
}

/// The post-upgrade SQL of `change.catch_up`'s versions, for its tenant only.
async fn catch_up(conn: &mut PgConnection, change: &StatusChange<'_>) -> StoreResult<()> {
    if change.catch_up.is_empty() {
        return Ok(());
    }
    let posts: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT post_upgrade_sql FROM core_module_versions WHERE module = $1 AND id = ANY($2) \
         ORDER BY major, minor, patch",
    )
    .bind(change.module)
    .bind(change.catch_up)
    .fetch_all(&mut *conn)
    .await?;
    sqlx::query("SELECT set_config('steward.migration', 'on', true), set_config('app.current_tenant_id', $1, true)")
        .bind(change.tenant_id.to_string())
        .execute(&mut *conn)
        .await?;
    for post in posts.iter().flatten().filter(|s| !s.trim().is_empty()) {
        sqlx::Executor::execute(&mut *conn, post.as_str())
            .await
            .map_err(|e| as_migration_error(e.into()))?;
    }
    sqlx::query("SELECT set_config('steward.migration', '', true), set_config('app.current_tenant_id', '', true)")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[async_trait]
impl DomainStore for PgStore {
    async fn tenant_create(&self, tenant: &NewTenant) -> StoreResult<TenantRecord> {
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(&format!(
            "INSERT INTO tenants (slug, name, internal_tester, beta_opt_in, webhook_url, webhook_secret) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {TENANT_COLUMNS}"
        ))
        .bind(&tenant.slug)
        .bind(&tenant.name)
        .bind(tenant.internal_tester)
        .bind(tenant.beta_opt_in)
        .bind(&tenant.webhook_url)
        .bind(&tenant.webhook_secret)
        .fetch_one(&mut *tx)
        .await?;
        let created = tenant_from(&row)?;
        let after = serde_json::to_value(&created).map_err(corrupt)?;
        audit(
            &mut tx,
            "system",
            "tenant.create",
            Some(created.id),
            None,
            "tenant",
            None,
            Some(after),
        )
        .await?;
        tx.commit().await?;
        Ok(created)
    }

    async fn tenant_get(&self, id: TenantId) -> StoreResult<Option<TenantRecord>> {
        sqlx::query(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(tenant_from)
        .transpose()
    }

    async fn module_put(&self, module: &ModuleRecord, actor: &str) -> StoreResult<()> {
        Slug::parse(&module.slug)?;
        let mut tx = self.pool().begin().await?;
        let before = sqlx::query(&format!(
            "SELECT {MODULE_COLUMNS} FROM core_modules WHERE slug = $1 FOR UPDATE"
        ))
        .bind(&module.slug)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(module_from)
        .transpose()?;
        sqlx::query(
            "INSERT INTO core_modules (slug, name, description, pricing_tier, maturity, dependencies, \
                 data_retention_days, successor, sunset_date) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::date) \
             ON CONFLICT (slug) DO UPDATE SET name = EXCLUDED.name, description = EXCLUDED.description, \
                 pricing_tier = EXCLUDED.pricing_tier, dependencies = EXCLUDED.dependencies, \
                 data_retention_days = EXCLUDED.data_retention_days, successor = EXCLUDED.successor, \
                 sunset_date = EXCLUDED.sunset_date, updated_at = now()",
        )
        .bind(&module.slug)
        .bind(&module.name)
        .bind(&module.description)
        .bind(&module.pricing_tier)
        .bind(module.maturity.as_str())
        .bind(json!(module.dependencies))
        .bind(module.data_retention_days)
        .bind(&module.successor)
        .bind(&module.sunset_date)
        .execute(&mut *tx)
        .await?;
        let mut after = module.clone();
        if let Some(before) = &before {
            after.maturity = before.maturity;
        }
        if before.as_ref() != Some(&after) {
            let before = before
                .map(|b| serde_json::to_value(b).map_err(corrupt))
                .transpose()?;
            let after = serde_json::to_value(&after).map_err(corrupt)?;
            audit(
                &mut tx,
                actor,
                "module.put",
                None,
                Some(&module.slug),
                "core_module",
                before,
                Some(after),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn module_get(&self, slug: &str) -> StoreResult<Option<ModuleRecord>> {
        sqlx::query(&format!(
            "SELECT {MODULE_COLUMNS} FROM core_modules WHERE slug = $1"
        ))
        .bind(slug)
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(module_from)
        .transpose()
    }

    async fn modules_list(&self) -> StoreResult<Vec<ModuleRecord>> {
        sqlx::query(&format!(
            "SELECT {MODULE_COLUMNS} FROM core_modules ORDER BY slug"
        ))
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(module_from)
        .collect()
    }

    async fn module_set_maturity(
        &self,
        slug: &str,
        to: Maturity,
        actor: &str,
    ) -> StoreResult<Maturity> {
        let mut tx = self.pool().begin().await?;
        let current: Option<String> =
            sqlx::query_scalar("SELECT maturity FROM core_modules WHERE slug = $1 FOR UPDATE")
                .bind(slug)
                .fetch_optional(&mut *tx)
                .await?;
        let current = current.ok_or_else(|| {
            StoreError::InvalidInput(format!("no module `{slug}` in the catalog"))
        })?;
        let from: Maturity = current.parse().map_err(corrupt)?;
        from.check_move(to)?;
        sqlx::query("UPDATE core_modules SET maturity = $2, updated_at = now() WHERE slug = $1")
            .bind(slug)
            .bind(to.as_str())
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            actor,
            "module.maturity",
            None,
            Some(slug),
            "core_module",
            Some(json!({"maturity": from})),
            Some(json!({"maturity": to})),
        )
        .await?;
        tx.commit().await?;
        Ok(from)
    }

    async fn version_publish(
        &self,
        module: &str,
        version: &NewVersion,
    ) -> StoreResult<VersionRecord> {
        check_version(module, version)?;
        let inserted = sqlx::query(&format!(
            "INSERT INTO core_module_versions (module, version, major, minor, patch, build_hash, changelog, \
                 up_sql, down_sql, pre_upgrade_sql, post_upgrade_sql, settings_schema, tables_created) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (module, version) DO NOTHING RETURNING {VERSION_COLUMNS}"
        ))
        .bind(module)
        .bind(&version.version)
        .bind(version.major)
        .bind(version.minor)
        .bind(version.patch)
        .bind(&version.build_hash)
        .bind(&version.changelog)
        .bind(&version.up_sql)
        .bind(&version.down_sql)
        .bind(&version.pre_upgrade_sql)
        .bind(&version.post_upgrade_sql)
        .bind(&version.settings_schema)
        .bind(json!(version.tables_created))
        .fetch_optional(self.pool())
        .await?;
        let row = match inserted {
            Some(row) => row,
            None => {
                sqlx::query(&format!(
                    "SELECT {VERSION_COLUMNS} FROM core_module_versions WHERE module = $1 AND version = $2"
                ))
                .bind(module)
                .bind(&version.version)
                .fetch_one(self.pool())
                .await?
            }
        };
        version_from(&row)
    }

    async fn versions_of(&self, module: &str) -> StoreResult<Vec<VersionRecord>> {
        sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM core_module_versions WHERE module = $1 \
             ORDER BY major, minor, patch"
        ))
        .bind(module)
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(version_from)
        .collect()
    }

    async fn tenant_module_request(
        &self,
        request: &ModuleRequest<'_>,
    ) -> StoreResult<TenantModuleRecord> {
        let mut tx = self.pool().begin().await?;
        let existing = sqlx::query(&format!(
            "SELECT {TENANT_MODULE_COLUMNS} FROM tenant_modules WHERE tenant_id = $1 AND module = $2 FOR UPDATE"
        ))
        .bind(request.tenant_id)
        .bind(request.module)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(tenant_module_from)
        .transpose()?;
        let found: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants t, core_module_versions v WHERE t.id = $1 AND v.id = $2 AND v.module = $3")
            .bind(request.tenant_id)
            .bind(request.version_id)
            .bind(request.module)
            .fetch_one(&mut *tx)
            .await?;
        check_request_refers(found, request)?;
        if existing.as_ref().map(|e| e.status) != request.expected {
            return Err(StoreError::Conflict(format!(
                "tenant {}'s module `{}` changed meanwhile ({})",
                request.tenant_id,
                request.module,
                existing.map_or("removed".into(), |e| e.status.to_string())
            )));
        }
        let row = sqlx::query(&format!(
            "INSERT INTO tenant_modules (tenant_id, module, status, version_id, status_reason) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (tenant_id, module) DO UPDATE SET status = EXCLUDED.status, \
                 version_id = EXCLUDED.version_id, previous_version_id = NULL, \
                 status_reason = EXCLUDED.status_reason, disabled_from = NULL, \
                 provisioning = NULL, requested_at = now(), enabled_at = NULL, updated_at = now() \
             RETURNING {TENANT_MODULE_COLUMNS}"
        ))
        .bind(request.tenant_id)
        .bind(request.module)
        .bind(request.status.as_str())
        .bind(request.version_id)
        .bind(request.reason)
        .fetch_one(&mut *tx)
        .await?;
        let record = tenant_module_from(&row)?;
        audit(
            &mut tx,
            request.actor,
            "module.request",
            Some(request.tenant_id),
            Some(request.module),
            "tenant_module",
            existing.as_ref().map(snapshot),
            Some(snapshot(&record)),
        )
        .await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn tenant_module_move(
        &self,
        change: &StatusChange<'_>,
    ) -> StoreResult<TenantModuleRecord> {
        let mut tx = self.pool().begin().await?;
        let record = move_status(&mut tx, change).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn tenant_module_get(
        &self,
        tenant_id: TenantId,
        module: &str,
    ) -> StoreResult<Option<TenantModuleRecord>> {
        sqlx::query(&format!(
            "SELECT {TENANT_MODULE_COLUMNS} FROM tenant_modules WHERE tenant_id = $1 AND module = $2"
        ))
        .bind(tenant_id)
        .bind(module)
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(tenant_module_from)
        .transpose()
    }

    async fn tenant_modules(&self, tenant_id: TenantId) -> StoreResult<Vec<TenantModuleRecord>> {
        sqlx::query(&format!(
            "SELECT {TENANT_MODULE_COLUMNS} FROM tenant_modules WHERE tenant_id = $1 ORDER BY module"
        ))
        .bind(tenant_id)
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(tenant_module_from)
        .collect()
    }

    async fn settings_set(
        &self,
        tenant_id: TenantId,
        module: &str,
        settings: &Value,
        actor: &str,
    ) -> StoreResult<Value> {
        crate::store::domain::check_settings(settings)?;
        let mut tx = self.pool().begin().await?;
        let exists: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM tenant_modules WHERE tenant_id = $1 AND module = $2 FOR UPDATE",
        )
        .bind(tenant_id)
        .bind(module)
        .fetch_optional(&mut *tx)
        .await?;
        if exists.is_none() {
            return Err(StoreError::InvalidInput(format!(
                "tenant {tenant_id} has no module `{module}`"
            )));
        }
        let before: Option<Value> = sqlx::query_scalar(
            "SELECT settings FROM tenant_module_settings WHERE tenant_id = $1 AND module = $2 FOR UPDATE",
        )
        .bind(tenant_id)
        .bind(module)
        .fetch_optional(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO tenant_module_settings (tenant_id, module, settings) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id, module) DO UPDATE SET settings = EXCLUDED.settings, updated_at = now()",
        )
        .bind(tenant_id)
        .bind(module)
        .bind(settings)
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            actor,
            "module.settings",
            Some(tenant_id),
            Some(module),
            "tenant_module_settings",
            before.clone(),
            Some(settings.clone()),
        )
        .await?;
        tx.commit().await?;
        Ok(before.unwrap_or_else(|| json!({})))
    }

    async fn settings_get(&self, tenant_id: TenantId, module: &str) -> StoreResult<Value> {
        let settings: Option<Value> = sqlx::query_scalar(
            "SELECT settings FROM tenant_module_settings WHERE tenant_id = $1 AND module = $2",
        )
        .bind(tenant_id)
        .bind(module)
        .fetch_optional(self.pool())
        .await?;
        let settings: Option<Value> = settings;
        Ok(settings.unwrap_or_else(|| json!({})))
    }

    async fn tenant_modules_stuck(
        &self,
        status: TenantModuleStatus,
        idle: std::time::Duration,
        limit: i64,
    ) -> StoreResult<Vec<TenantModuleRecord>> {
        sqlx::query(&format!(
            "SELECT {TENANT_MODULE_COLUMNS} FROM tenant_modules \
             WHERE status = $1 AND updated_at <= now() - $2 * interval '1 millisecond' \
             ORDER BY updated_at LIMIT $3"
        ))
        .bind(status.as_str())
        .bind(i64::try_from(idle.as_millis().min(3_000_000_000_000)).unwrap_or(0))
        .bind(limit)
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(tenant_module_from)
        .collect()
    }

    async fn module_tenants(&self, module: &str) -> StoreResult<Vec<TenantModuleRecord>> {
        sqlx::query(&format!(
            "SELECT {TENANT_MODULE_COLUMNS} FROM tenant_modules WHERE module = $1 ORDER BY tenant_id"
        ))
        .bind(module)
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(tenant_module_from)
        .collect()
    }

    async fn module_table_dump(
        &self,
        table: &ModuleTable,
        tenant: Option<TenantId>,
        out: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
    ) -> StoreResult<u64> {
        use futures::TryStreamExt;
        use tokio::io::AsyncWriteExt;
        let sql = format!(
            "SELECT to_jsonb(t)::text FROM {} t WHERE $1::int8 IS NULL OR tenant_id = $1 \
             ORDER BY tenant_id, created_at",
            table.quoted()
        );
        let mut rows = sqlx::query_scalar::<_, String>(&sql)
            .bind(tenant)
            .fetch(self.pool());
        let mut count = 0;
        while let Some(line) = rows.try_next().await? {
            out.write_all(line.as_bytes()).await.map_err(io_error)?;
            out.write_all(b"\n").await.map_err(io_error)?;
            count += 1;
        }
        out.flush().await.map_err(io_error)?;
        Ok(count)
    }

    async fn module_rollback(&self, plan: &RollbackPlan<'_>) -> StoreResult<()> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('steward.module_migration'))")
            .execute(&mut *tx)
            .await?;
        let rows: Vec<(TenantId, String, Option<i64>)> = sqlx::query_as(
            "SELECT tenant_id, status, version_id FROM tenant_modules WHERE module = $1 \
             ORDER BY tenant_id FOR UPDATE",
        )
        .bind(plan.module)
        .fetch_all(&mut *tx)
        .await?;
        if !rows_as_seen(&rows, plan.seen) {
            return Err(StoreError::Conflict(format!(
                "the tenants of `{}` changed while the rollback was decided: try again",
                plan.module
            )));
        }
        let downs: Vec<(i64, String)> = sqlx::query_as(
            "SELECT id, down_sql FROM core_module_versions WHERE module = $1 AND id = ANY($2)",
        )
        .bind(plan.module)
        .bind(plan.undo)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query("SELECT set_config('steward.migration', 'on', true)")
            .execute(&mut *tx)
            .await?;
        for id in plan.undo {
            let (_, down_sql) = downs.iter().find(|(v, _)| v == id).ok_or_else(|| {
                StoreError::InvalidInput(format!("`{}` has no version {id}", plan.module))
            })?;
            sqlx::Executor::execute(&mut *tx, down_sql.as_str())
                .await
                .map_err(|e| as_migration_error(e.into()))?;
        }
        sqlx::query("SELECT set_config('steward.migration', '', true)")
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE core_module_versions SET migrated_at = NULL WHERE id = ANY($1)")
            .bind(plan.undo)
            .execute(&mut *tx)
            .await?;
        for tenant in plan.tenants {
            let mut change = StatusChange::new(
                *tenant,
                plan.module,
                Some(TenantModuleStatus::UpToDate),
                TenantModuleStatus::Enabled,
                plan.actor,
                "module.rollback",
            )
            .because(plan.reason);
            change.set_version = Some(plan.previous);
            move_status(&mut tx, &change).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn tenants_seed(&self, prefix: &str, count: i64, plan: &str) -> StoreResult<u64> {
        check_seed_count(count)?;
        let mut tx = self.pool().begin().await?;
        plan_exists(&mut tx, plan).await?;
        let created = sqlx::query(
            "WITH t AS (INSERT INTO tenants (slug, name) \
                        SELECT $1 || '-' || n, $1 || ' ' || n FROM generate_series(1, $2) n \
                        RETURNING id) \
             INSERT INTO subscriptions (tenant_id, plan_id, status) \
             SELECT t.id, p.id, 'active' FROM t, plans p WHERE p.slug = $3",
        )
        .bind(prefix)
        .bind(count)
        .bind(plan)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(created)
    }

    async fn plan_create(&self, slug: &str, name: &str) -> StoreResult<i64> {
        Ok(
            sqlx::query_scalar("INSERT INTO plans (slug, name) VALUES ($1, $2) RETURNING id")
                .bind(slug)
                .bind(name)
                .fetch_one(self.pool())
                .await?,
        )
    }

    async fn plan_add_module(&self, plan: &str, module: &str, actor: &str) -> StoreResult<bool> {
        let mut tx = self.pool().begin().await?;
        let added = sqlx::query(
            "INSERT INTO plan_modules (plan_id, module) SELECT id, $2 FROM plans WHERE slug = $1 \
             ON CONFLICT DO NOTHING",
        )
        .bind(plan)
        .bind(module)
        .execute(&mut *tx)
        .await
        .map_err(|e| plan_error(e, plan, module))?
        .rows_affected()
            == 1;
        if added {
            audit(
                &mut tx,
                actor,
                "plan.add_module",
                None,
                Some(module),
                "plan_module",
                None,
                Some(json!({"plan": plan})),
            )
            .await?;
        } else {
            plan_exists(&mut tx, plan).await?;
        }
        tx.commit().await?;
        Ok(added)
    }

    async fn plan_remove_module(&self, plan: &str, module: &str, actor: &str) -> StoreResult<bool> {
        let mut tx = self.pool().begin().await?;
        plan_exists(&mut tx, plan).await?;
        let removed = sqlx::query(
            "DELETE FROM plan_modules USING plans \
             WHERE plan_modules.plan_id = plans.id AND plans.slug = $1 AND plan_modules.module = $2",
        )
        .bind(plan)
        .bind(module)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if removed {
            audit(
                &mut tx,
                actor,
                "plan.remove_module",
                None,
                Some(module),
                "plan_module",
                Some(json!({"plan": plan})),
                None,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(removed)
    }

    async fn subscription_create(
        &self,
        tenant_id: TenantId,
        plan: &str,
        status: &str,
    ) -> StoreResult<i64> {
        if !crate::store::domain::SUBSCRIPTION_STATUSES.contains(&status) {
            return Err(StoreError::InvalidInput(format!(
                "unknown subscription status `{status}` (one of {:?})",
                crate::store::domain::SUBSCRIPTION_STATUSES
            )));
        }
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO subscriptions (tenant_id, plan_id, status) \
             SELECT $1, id, $3 FROM plans WHERE slug = $2 RETURNING id",
        )
        .bind(tenant_id)
        .bind(plan)
        .bind(status)
        .fetch_optional(self.pool())
        .await?;
        id.ok_or_else(|| StoreError::InvalidInput(format!("no plan `{plan}`")))
    }

    async fn plan_sync(
        &self,
        plan: Option<&str>,
        module: Option<&str>,
        actor: &str,
    ) -> StoreResult<Vec<PlanSynced>> {
        let mut tx = self.pool().begin().await?;
        if let Some(plan) = plan {
            plan_exists(&mut tx, plan).await?;
        }
        let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(PLAN_SYNC)
            .bind(plan)
            .bind(module)
            .bind(actor)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows.into_iter().map(PlanSynced::from_row).collect())
    }

    async fn audit_list(
        &self,
        tenant_id: Option<TenantId>,
        limit: i64,
    ) -> StoreResult<Vec<AuditRecord>> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, tenant_id, module, entity, before, after FROM audit_logs \
             WHERE tenant_id IS NOT DISTINCT FROM $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(tenant_id)
        .bind(limit.clamp(1, 10_000))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditRecord {
                    id: row.try_get("id")?,
                    at: row.try_get("at")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    tenant_id: row.try_get("tenant_id")?,
                    module: row.try_get("module")?,
                    entity: row.try_get("entity")?,
                    before: row.try_get("before")?,
                    after: row.try_get("after")?,
                })
            })
            .collect()
    }
}

/// The audit trigger every module table gets (created or replaced under the migration lock).
const AUDIT_FUNCTION: &str = r#"
CREATE OR REPLACE FUNCTION steward_module_audit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
BEGIN
    -- A migration's own row changes are audited as the upgrade, not row by row.
    IF current_setting('steward.migration', true) = 'on' THEN
        RETURN NULL;
    END IF;
    -- A purge deletes rows already in a verified export: the export is their record.
    IF TG_OP = 'DELETE' AND current_setting('steward.purge', true) = 'on' THEN
        RETURN NULL;
    END IF;
    INSERT INTO audit_logs (actor, action, tenant_id, module, entity, before, after)
    VALUES (coalesce(nullif(current_setting('app.actor', true), ''), session_user),
            'row.' || lower(TG_OP),
            CASE WHEN TG_OP = 'DELETE' THEN OLD.tenant_id ELSE NEW.tenant_id END,
            TG_ARGV[0], TG_TABLE_NAME,
            CASE WHEN TG_OP = 'INSERT' THEN NULL ELSE to_jsonb(OLD) END,
            CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE to_jsonb(NEW) END);
    RETURN NULL;
END
$fn$"#;

/// Freezes a tenant's rows while its module is not in use (DISABLED, SUSPENDED, …): no row is
/// written or changed for it; steward's own deletions (archive, purge) still go through.
const GUARD_FUNCTION: &str = r#"
CREATE OR REPLACE FUNCTION steward_module_guard() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
BEGIN
    -- Migrations change every tenant's rows (the tables are shared), frozen ones included.
    IF current_setting('steward.migration', true) = 'on' THEN
        RETURN NEW;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM tenant_modules
                   WHERE tenant_id = NEW.tenant_id AND module = TG_ARGV[0]
                     AND status IN ('ENABLED', 'UPGRADING', 'UP_TO_DATE')) THEN
        RAISE EXCEPTION 'module % is not in use by tenant %: its data is frozen', TG_ARGV[0], NEW.tenant_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$fn$"#;

/// `tenant_app_role` (cluster-wide, created once) and its use of this schema.
const APP_ROLE: &str = r#"
DO $do$
BEGIN
    BEGIN
        CREATE ROLE tenant_app_role NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO tenant_app_role', current_schema());
END
$do$"#;

/// See [`crate::store::StepTx::module_migrate`].
pub(super) async fn migrate_module(
    conn: &mut PgConnection,
    module: &str,
    version_id: i64,
) -> StoreResult<MigrationReport> {
    let slug = Slug::parse(module)?;
    // Tenants joining an installed module only read; the lock is for those who migrate.
    let plan = read_plan(conn, &slug, version_id, false).await?;
    if plan.pending.is_empty() {
        return Ok(plan.report(true, None));
    }
    // One module migration at a time in this database: tenants provisioning the same module
    // at once wait here, then find its tables created.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('steward.module_migration'))")
        .execute(&mut *conn)
        .await?;
    let plan = read_plan(conn, &slug, version_id, true).await?;
    let mut report = plan.report(true, None);
    if plan.pending.is_empty() {
        return Ok(report);
    }
    sqlx::query("SAVEPOINT module_migration")
        .execute(&mut *conn)
        .await?;
    let mut outcome = Ok(());
    for version in &plan.pending {
        outcome = create_tables(conn, &slug, &version.tables, &version.up_sql).await;
        if outcome.is_err() {
            break;
        }
    }
    if let Err(err) = outcome {
        sqlx::query("ROLLBACK TO SAVEPOINT module_migration")
            .execute(&mut *conn)
            .await?;
        return Err(as_migration_error(err));
    }
    sqlx::query("RELEASE SAVEPOINT module_migration")
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE core_module_versions SET migrated_at = now() WHERE id = ANY($1)")
        .bind(plan.pending.iter().map(|v| v.id).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    report.created = true;
    Ok(report)
}

/// The module's versions through `version_id` and which still have to run (`locked`: read
/// them `FOR UPDATE`, under the migration lock).
async fn read_plan(
    conn: &mut PgConnection,
    slug: &Slug,
    version_id: i64,
    locked: bool,
) -> StoreResult<MigrationPlan> {
    let rows = sqlx::query(&format!(
        "SELECT id, version, up_sql, tables_created, migrated_at IS NOT NULL AS migrated \
         FROM core_module_versions WHERE module = $1 ORDER BY major, minor, patch{}",
        if locked { " FOR UPDATE" } else { "" }
    ))
    .bind(slug.as_str())
    .fetch_all(&mut *conn)
    .await?;
    let versions = rows
        .iter()
        .map(|row| {
            Ok(VersionSql {
                id: row.try_get("id")?,
                version: row.try_get("version")?,
                up_sql: row.try_get("up_sql")?,
                tables: serde_json::from_value(row.try_get("tables_created")?).map_err(corrupt)?,
                migrated: row.try_get("migrated")?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    MigrationPlan::new(slug, versions, version_id)
}

async fn create_tables(
    conn: &mut PgConnection,
    slug: &Slug,
    tables: &[ModuleTable],
    up_sql: &str,
) -> StoreResult<()> {
    // PostgreSQL's audit trigger serialises the whole row (`to_jsonb`), so columns added by
    // later versions are audited without touching it.
    sqlx::Executor::execute(&mut *conn, AUDIT_FUNCTION).await?;
    sqlx::Executor::execute(&mut *conn, GUARD_FUNCTION).await?;
    sqlx::Executor::execute(&mut *conn, APP_ROLE).await?;
    sqlx::Executor::execute(&mut *conn, up_sql).await?;
    for table in tables {
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1",
        )
        .bind(table.as_str())
        .fetch_all(&mut *conn)
        .await?;
        if columns.is_empty() {
            return Err(StoreError::Migration(format!(
                "the migration did not create the declared table {table}"
            )));
        }
        for needed in ["tenant_id", "created_at"] {
            if !columns.iter().any(|c| c == needed) {
                return Err(StoreError::Migration(format!(
                    "module table {table} has no {needed} column"
                )));
            }
        }
        let name = table.quoted();
        let index = quote_ident(&format!("{table}_tenant_created"));
        let trigger = quote_ident(&format!("{table}_audit"));
        let module = slug.as_str(); // validated: [a-z0-9_] only
        let guard = quote_ident(&format!("{table}_frozen"));
        let statements = [
            format!("CREATE INDEX {index} ON {name} (tenant_id, created_at)"),
            format!(
                "CREATE TRIGGER {guard} BEFORE INSERT OR UPDATE ON {name} \
                 FOR EACH ROW EXECUTE FUNCTION steward_module_guard('{module}')"
            ),
            format!(
                "CREATE TRIGGER {trigger} AFTER INSERT OR UPDATE OR DELETE ON {name} \
                 FOR EACH ROW EXECUTE FUNCTION steward_module_audit('{module}')"
            ),
            format!("ALTER TABLE {name} ENABLE ROW LEVEL SECURITY"),
            format!(
                "CREATE POLICY tenant_isolation ON {name} \
                 USING (tenant_id = nullif(current_setting('app.current_tenant_id', true), '')::bigint) \
                 WITH CHECK (tenant_id = nullif(current_setting('app.current_tenant_id', true), '')::bigint)"
            ),
            format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {name} TO tenant_app_role"),
        ];
        for statement in statements {
            sqlx::query(&statement).execute(&mut *conn).await?;
        }
    }
    Ok(())
}

/// See [`crate::store::StepTx::module_upgrade`].
pub(super) async fn upgrade_module(
    conn: &mut PgConnection,
    module: &str,
    version_id: i64,
    tenants: &[TenantId],
) -> StoreResult<MigrationReport> {
    let slug = Slug::parse(module)?;
    let (pre, post): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT pre_upgrade_sql, post_upgrade_sql FROM core_module_versions \
         WHERE id = $1 AND module = $2",
    )
    .bind(version_id)
    .bind(slug.as_str())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| {
        StoreError::InvalidInput(format!("module `{slug}` has no version {version_id}"))
    })?;
    sqlx::query("SAVEPOINT module_upgrade")
        .execute(&mut *conn)
        .await?;
    let outcome = async {
        sqlx::query("SELECT set_config('steward.migration', 'on', true)")
            .execute(&mut *conn)
            .await?;
        if let Some(pre) = pre.as_deref().filter(|s| !s.trim().is_empty()) {
            sqlx::Executor::execute(&mut *conn, pre).await?;
        }
        let report = migrate_module(conn, slug.as_str(), version_id).await?;
        if let Some(post) = post.as_deref().filter(|s| !s.trim().is_empty()) {
            for tenant in tenants {
                sqlx::query("SELECT set_config('app.current_tenant_id', $1, true)")
                    .bind(tenant.to_string())
                    .execute(&mut *conn)
                    .await?;
                sqlx::Executor::execute(&mut *conn, post).await?;
            }
            sqlx::query("SELECT set_config('app.current_tenant_id', '', true)")
                .execute(&mut *conn)
                .await?;
        }
        sqlx::query("SELECT set_config('steward.migration', '', true)")
            .execute(&mut *conn)
            .await?;
        Ok::<_, StoreError>(report)
    }
    .await;
    match outcome {
        Ok(report) => {
            sqlx::query("RELEASE SAVEPOINT module_upgrade")
                .execute(&mut *conn)
                .await?;
            Ok(report)
        }
        Err(err) => {
            sqlx::query("ROLLBACK TO SAVEPOINT module_upgrade")
                .execute(&mut *conn)
                .await?;
            Err(as_migration_error(err))
        }
    }
}
