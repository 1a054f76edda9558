//! SQLite implementation of [`DomainStore`] (timestamps in unix milliseconds, JSON as text;
//! writes hold the store's write lock, SQLite's stand-in for `FOR UPDATE`).

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
use crate::store::sqlite::{SqliteStore, from_ms, from_opt_ms, now_ms};
use crate::store::{StoreError, StoreResult};
use async_trait::async_trait;
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnection, SqliteRow};

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn json_text(row: &SqliteRow, column: &str) -> StoreResult<Option<Value>> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| serde_json::from_str(&t).map_err(corrupt))
        .transpose()
}

const TENANT_COLUMNS: &str =
    "id, slug, name, internal_tester, beta_opt_in, webhook_url, created_at";
const MODULE_COLUMNS: &str = "slug, name, description, pricing_tier, maturity, dependencies, \
     data_retention_days, successor, sunset_date";
const VERSION_COLUMNS: &str =
    "id, module, version, major, tables_created, settings_schema, migrated_at";
const TENANT_MODULE_COLUMNS: &str = "tenant_id, module, status, version_id, previous_version_id, status_reason, requested_at, \
     updated_at, disabled_from, upgraded_at";

fn tenant_from(row: &SqliteRow) -> StoreResult<TenantRecord> {
    Ok(TenantRecord {
        id: row.try_get("id")?,
        slug: row.try_get("slug")?,
        name: row.try_get("name")?,
        internal_tester: row.try_get("internal_tester")?,
        beta_opt_in: row.try_get("beta_opt_in")?,
        webhook_url: row.try_get("webhook_url")?,
        created_at: from_ms(row.try_get("created_at")?)?,
    })
}

fn module_from(row: &SqliteRow) -> StoreResult<ModuleRecord> {
    let maturity: String = row.try_get("maturity")?;
    let dependencies = json_text(row, "dependencies")?.unwrap_or(Value::Null);
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

fn version_from(row: &SqliteRow) -> StoreResult<VersionRecord> {
    let tables = json_text(row, "tables_created")?.unwrap_or(Value::Null);
    Ok(VersionRecord {
        id: row.try_get("id")?,
        module: row.try_get("module")?,
        version: row.try_get("version")?,
        major: row.try_get("major")?,
        tables_created: serde_json::from_value(tables).map_err(corrupt)?,
        settings_schema: json_text(row, "settings_schema")?,
        migrated_at: from_opt_ms(row.try_get("migrated_at")?)?,
    })
}

fn tenant_module_from(row: &SqliteRow) -> StoreResult<TenantModuleRecord> {
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
        upgraded_at: from_opt_ms(row.try_get("upgraded_at")?)?,
        requested_at: from_ms(row.try_get("requested_at")?)?,
        updated_at: from_ms(row.try_get("updated_at")?)?,
    })
}

/// One audit row, on the caller's transaction.
#[allow(clippy::too_many_arguments)]
async fn audit(
    conn: &mut SqliteConnection,
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
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .bind(actor)
    .bind(action)
    .bind(tenant_id)
    .bind(module)
    .bind(entity)
    .bind(before.map(|v| v.to_string()))
    .bind(after.map(|v| v.to_string()))
    .execute(conn)
    .await?;
    Ok(())
}

async fn plan_exists(conn: &mut SqliteConnection, plan: &str) -> StoreResult<()> {
    let found: Option<i64> = sqlx::query_scalar("SELECT id FROM plans WHERE slug = ?1")
        .bind(plan)
        .fetch_optional(&mut *conn)
        .await?;
    found
        .map(|_| ())
        .ok_or_else(|| StoreError::InvalidInput(format!("no plan `{plan}`")))
}

fn snapshot(record: &TenantModuleRecord) -> Value {
    json!({"status": record.status, "version_id": record.version_id, "reason": record.status_reason})
}

/// Move a tenant module's status on the caller's transaction: locked, checked against the
/// rules (and `change.from`), updated and audited. Shared by [`DomainStore`] and the step
/// transactions of the lifecycle workflows.
pub(super) async fn move_status(
    conn: &mut SqliteConnection,
    change: &StatusChange<'_>,
) -> StoreResult<TenantModuleRecord> {
    let current = sqlx::query(&format!(
        "SELECT {TENANT_MODULE_COLUMNS} FROM tenant_modules WHERE tenant_id = ?1 AND module = ?2"
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
    // `change.catch_up` has nothing to run here: SQLite's post-upgrade SQL ran for every
    // tenant during the upgrade (it has no per-transaction tenant setting to scope it).
    let row = sqlx::query(&format!(
            "UPDATE tenant_modules SET status = ?3, status_reason = ?4, updated_at = ?5, \
                 disabled_from = CASE WHEN ?3 = 'DISABLED' THEN status ELSE NULL END, \
                 provisioning = coalesce(?6, provisioning), \
                 previous_version_id = CASE WHEN ?7 IS NULL THEN previous_version_id ELSE version_id END, \
                 version_id = coalesce(?7, version_id), \
                 upgraded_at = CASE WHEN ?7 IS NULL THEN upgraded_at ELSE ?5 END, \
                 enabled_at = CASE WHEN ?3 = 'ENABLED' AND enabled_at IS NULL THEN ?5 ELSE enabled_at END \
             WHERE tenant_id = ?1 AND module = ?2 RETURNING {TENANT_MODULE_COLUMNS}"
        ))
        .bind(change.tenant_id)
        .bind(change.module)
        .bind(change.to.as_str())
        .bind(change.reason)
        .bind(now_ms())
        .bind(change.provisioning.map(Value::to_string))
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

#[async_trait]
impl DomainStore for SqliteStore {
    async fn tenant_create(&self, tenant: &NewTenant) -> StoreResult<TenantRecord> {
        let _guard = self.write_lock.lock().await;
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(&format!(
            "INSERT INTO tenants (slug, name, internal_tester, beta_opt_in, webhook_url, webhook_secret) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING {TENANT_COLUMNS}"
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
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE id = ?1"
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
        let _guard = self.write_lock.lock().await;
        let mut tx = self.pool().begin().await?;
        let before = sqlx::query(&format!(
            "SELECT {MODULE_COLUMNS} FROM core_modules WHERE slug = ?1"
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
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
             ON CONFLICT (slug) DO UPDATE SET name = EXCLUDED.name, description = EXCLUDED.description, \
                 pricing_tier = EXCLUDED.pricing_tier, dependencies = EXCLUDED.dependencies, \
                 data_retention_days = EXCLUDED.data_retention_days, successor = EXCLUDED.successor, \
                 sunset_date = EXCLUDED.sunset_date, updated_at = ?10",
        )
        .bind(&module.slug)
        .bind(&module.name)
        .bind(&module.description)
        .bind(&module.pricing_tier)
        .bind(module.maturity.as_str())
        .bind(json!(module.dependencies).to_string())
        .bind(module.data_retention_days)
        .bind(&module.successor)
        .bind(&module.sunset_date)
        .bind(now_ms())
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
            "SELECT {MODULE_COLUMNS} FROM core_modules WHERE slug = ?1"
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
        let _guard = self.write_lock.lock().await;
        let mut tx = self.pool().begin().await?;
        let current: Option<String> =
            sqlx::query_scalar("SELECT maturity FROM core_modules WHERE slug = ?1")
                .bind(slug)
                .fetch_optional(&mut *tx)
                .await?;
        let current = current.ok_or_else(|| {
            StoreError::InvalidInput(format!("no module `{slug}` in the catalog"))
        })?;
        let from: Maturity = current.parse().map_err(corrupt)?;
        from.check_move(to)?;
        sqlx::query("UPDATE core_modules SET maturity = ?2, updated_at = ?3 WHERE slug = ?1")
            .bind(slug)
            .bind(to.as_str())
            .bind(now_ms())
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
        let _guard = self.write_lock.lock().await;
        let inserted = sqlx::query(&format!(
            "INSERT INTO core_module_versions (module, version, major, minor, patch, build_hash, changelog, \
                 up_sql, down_sql, pre_upgrade_sql, post_upgrade_sql, settings_schema, tables_created) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
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
        .bind(version.settings_schema.as_ref().map(Value::to_string))
        .bind(json!(version.tables_created).to_string())
        .fetch_optional(self.pool())
        .await?;
        let row = match inserted {
            Some(row) => row,
            None => {
                sqlx::query(&format!(
                    "SELECT {VERSION_COLUMNS} FROM core_module_versions WHERE module = ?1 AND version = ?2"
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
            "SELECT {VERSION_COLUMNS} FROM core_module_versions WHERE module = ?1 \
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
        let _guard = self.write_lock.lock().await;
        let mut tx = self.pool().begin().await?;
        let existing = sqlx::query(&format!(
            "SELECT {TENANT_MODULE_COLUMNS} FROM tenant_modules WHERE tenant_id = ?1 AND module = ?2"
        ))
        .bind(request.tenant_id)
        .bind(request.module)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(tenant_module_from)
        .transpose()?;
        let found: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants t, core_module_versions v WHERE t.id = ?1 AND v.id = ?2 AND v.module = ?3")
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
             VALUES (?1, ?2, ?3, ?4, ?6) \
             ON CONFLICT (tenant_id, module) DO UPDATE SET status = EXCLUDED.status, \
                 version_id = EXCLUDED.version_id, previous_version_id = NULL, \
                 status_reason = EXCLUDED.status_reason, disabled_from = NULL, \
                 provisioning = NULL, requested_at = ?5, enabled_at = NULL, updated_at = ?5 \
             RETURNING {TENANT_MODULE_COLUMNS}"
        ))
        .bind(request.tenant_id)
        .bind(request.module)
        .bind(request.status.as_str())
        .bind(request.version_id)
        .bind(now_ms())
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
        let _guard = self.write_lock.lock().await;
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
            "SELECT {TENANT_MODULE_COLUMNS} FROM tenant_modules WHERE tenant_id = ?1 AND module = ?2"
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
            "SELECT {TENANT_MODULE_COLUMNS} FROM tenant_modules WHERE tenant_id = ?1 ORDER BY module"
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
        let _guard = self.write_lock.lock().await;
        let mut tx = self.pool().begin().await?;
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM tenant_modules WHERE tenant_id = ?1 AND module = ?2")
                .bind(tenant_id)
                .bind(module)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Err(StoreError::InvalidInput(format!(
                "tenant {tenant_id} has no module `{module}`"
            )));
        }
        let before: Option<Value> = sqlx::query_scalar::<_, String>(
            "SELECT settings FROM tenant_module_settings WHERE tenant_id = ?1 AND module = ?2",
        )
        .bind(tenant_id)
        .bind(module)
        .fetch_optional(&mut *tx)
        .await?
        .map(|text| serde_json::from_str(&text).map_err(corrupt))
        .transpose()?;
        sqlx::query(
            "INSERT INTO tenant_module_settings (tenant_id, module, settings, updated_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (tenant_id, module) DO UPDATE SET settings = excluded.settings, updated_at = excluded.updated_at",
        )
        .bind(tenant_id)
        .bind(module)
        .bind(settings.to_string())
        .bind(now_ms())
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
        let settings: Option<String> = sqlx::query_scalar(
            "SELECT settings FROM tenant_module_settings WHERE tenant_id = ?1 AND module = ?2",
        )
        .bind(tenant_id)
        .bind(module)
        .fetch_optional(self.pool())
        .await?;
        let settings: Option<Value> = settings
            .map(|text| serde_json::from_str(&text).map_err(corrupt))
            .transpose()?;
        Ok(settings.unwrap_or_else(|| json!({})))
    }

    async fn tenant_modules_stuck(
        &self,
        status: TenantModuleStatus,
        idle: std::time::Duration,
        limit: i64,
    ) -> StoreResult<Vec<TenantModuleRecord>> {
        let before = now_ms() - i64::try_from(idle.as_millis()).unwrap_or(i64::MAX);
        sqlx::query(&format!(
            "SELECT {TENANT_MODULE_COLUMNS} FROM tenant_modules \
             WHERE status = ?1 AND updated_at <= ?2 ORDER BY updated_at LIMIT ?3"
        ))
        .bind(status.as_str())
        .bind(before)
        .bind(limit)
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(tenant_module_from)
        .collect()
    }

    async fn module_tenants(&self, module: &str) -> StoreResult<Vec<TenantModuleRecord>> {
        sqlx::query(&format!(
            "SELECT {TENANT_MODULE_COLUMNS} FROM tenant_modules WHERE module = ?1 ORDER BY tenant_id"
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
        let mut conn = self.pool().acquire().await?;
        let columns = columns_of(&mut conn, table).await?;
        let pairs: Vec<String> = columns
            .iter()
            .map(|c| {
                crate::domain::ident::check_setting_key(c)?;
                Ok(format!("'{c}', t.{}", quote_ident(c)))
            })
            .collect::<Result<_, DomainError>>()?;
        let sql = format!(
            "SELECT json_object({}) FROM {} t WHERE ?1 IS NULL OR tenant_id = ?1 \
             ORDER BY tenant_id, created_at",
            pairs.join(", "),
            table.quoted()
        );
        let mut rows = sqlx::query_scalar::<_, String>(&sql)
            .bind(tenant)
            .fetch(&mut *conn);
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
        let slug = Slug::parse(plan.module)?;
        let _guard = self.write_lock.lock().await;
        let mut tx = self.pool().begin().await?;
        let rows: Vec<(TenantId, String, Option<i64>)> = sqlx::query_as(
            "SELECT tenant_id, status, version_id FROM tenant_modules WHERE module = ?1 \
             ORDER BY tenant_id",
        )
        .bind(slug.as_str())
        .fetch_all(&mut *tx)
        .await?;
        if !rows_as_seen(&rows, plan.seen) {
            return Err(StoreError::Conflict(format!(
                "the tenants of `{slug}` changed while the rollback was decided: try again"
            )));
        }
        let versions: Vec<(i64, String, String, bool)> = sqlx::query_as(
            "SELECT id, down_sql, tables_created, migrated_at IS NOT NULL \
             FROM core_module_versions WHERE module = ?1",
        )
        .bind(slug.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let mut all_tables = Vec::new();
        let mut kept_tables = Vec::new();
        for (id, _, tables, migrated) in &versions {
            let names: Vec<String> = serde_json::from_str(tables).map_err(corrupt)?;
            for name in names {
                let table = ModuleTable::parse(&slug, &name)?;
                if *migrated && !plan.undo.contains(id) {
                    kept_tables.push(table.clone());
                }
                all_tables.push(table);
            }
        }
        // The triggers name columns the down SQL may drop, and a migration changes every
        // tenant's rows: off first, back after.
        drop_audit_triggers(&mut tx, &all_tables).await?;
        for id in plan.undo {
            let (_, down_sql, _, _) = versions
                .iter()
                .find(|(v, ..)| v == id)
                .ok_or_else(|| StoreError::InvalidInput(format!("`{slug}` has no version {id}")))?;
            sqlx::Executor::execute(&mut *tx, down_sql.as_str())
                .await
                .map_err(|e| as_migration_error(e.into()))?;
        }
        install_audit_triggers(&mut tx, &slug, &kept_tables).await?;
        sqlx::query(
            "UPDATE core_module_versions SET migrated_at = NULL \
             WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json!(plan.undo).to_string())
        .execute(&mut *tx)
        .await?;
        for tenant in plan.tenants {
            let mut change = StatusChange::new(
                *tenant,
                slug.as_str(),
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
        let _guard = self.write_lock.lock().await;
        let mut tx = self.pool().begin().await?;
        plan_exists(&mut tx, plan).await?;
        let now = now_ms();
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2) \
             INSERT INTO tenants (slug, name, created_at) \
             SELECT ?1 || '-' || i, ?1 || ' ' || i, ?3 FROM n",
        )
        .bind(prefix)
        .bind(count)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let created = sqlx::query(
            "INSERT INTO subscriptions (tenant_id, plan_id, status, started_at) \
             SELECT t.id, p.id, 'active', ?3 FROM tenants t, plans p \
             WHERE p.slug = ?2 AND t.slug LIKE ?1 || '-%' AND t.created_at = ?3",
        )
        .bind(prefix)
        .bind(plan)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(created)
    }

    async fn plan_create(&self, slug: &str, name: &str) -> StoreResult<i64> {
        let _guard = self.write_lock.lock().await;
        Ok(
            sqlx::query_scalar("INSERT INTO plans (slug, name) VALUES (?1, ?2) RETURNING id")
                .bind(slug)
                .bind(name)
                .fetch_one(self.pool())
                .await?,
        )
    }

    async fn plan_add_module(&self, plan: &str, module: &str, actor: &str) -> StoreResult<bool> {
        let _guard = self.write_lock.lock().await;
        let mut tx = self.pool().begin().await?;
        plan_exists(&mut tx, plan).await?;
        let known: Option<String> =
            sqlx::query_scalar("SELECT slug FROM core_modules WHERE slug = ?1")
                .bind(module)
                .fetch_optional(&mut *tx)
                .await?;
        if known.is_none() {
            return Err(StoreError::InvalidInput(format!(
                "no module `{module}` in the catalog (plan `{plan}`)"
            )));
        }
        let added = sqlx::query(
            "INSERT INTO plan_modules (plan_id, module, added_at) \
             SELECT id, ?2, ?3 FROM plans WHERE slug = ?1 ON CONFLICT DO NOTHING",
        )
        .bind(plan)
        .bind(module)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?
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
        }
        tx.commit().await?;
        Ok(added)
    }

    async fn plan_remove_module(&self, plan: &str, module: &str, actor: &str) -> StoreResult<bool> {
        let _guard = self.write_lock.lock().await;
        let mut tx = self.pool().begin().await?;
        plan_exists(&mut tx, plan).await?;
        let removed = sqlx::query(
            "DELETE FROM plan_modules WHERE module = ?2 \
               AND plan_id = (SELECT id FROM plans WHERE slug = ?1)",
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
        let _guard = self.write_lock.lock().await;
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO subscriptions (tenant_id, plan_id, status, started_at) \
             SELECT ?1, id, ?3, ?4 FROM plans WHERE slug = ?2 RETURNING id",
        )
        .bind(tenant_id)
        .bind(plan)
        .bind(status)
        .bind(now_ms())
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
        let _guard = self.write_lock.lock().await;
        let mut tx = self.pool().begin().await?;
        if let Some(plan) = plan {
            plan_exists(&mut tx, plan).await?;
        }
        let now = now_ms();
        // The same steps as PostgreSQL's single statement, through two temporary tables
        // (SQLite has no data-modifying CTEs); the write lock makes them one step.
        for statement in [
            "CREATE TEMP TABLE IF NOT EXISTS steward_sync_wanted (plan TEXT, tenant_id INTEGER, module TEXT, \
                                                                  dependencies_enabled INTEGER)",
            "CREATE TEMP TABLE IF NOT EXISTS steward_sync_new (tenant_id INTEGER, module TEXT, plan TEXT)",
            "DELETE FROM temp.steward_sync_wanted",
            "DELETE FROM temp.steward_sync_new",
        ] {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        sqlx::query(
            // `dependencies_enabled`: every module this one depends on is ENABLED or
            // UP_TO_DATE for the tenant (domain::status::satisfies_dependency); otherwise the
            // tenant is skipped.
            "INSERT INTO temp.steward_sync_wanted (plan, tenant_id, module, dependencies_enabled) \
             SELECT DISTINCT p.slug, s.tenant_id, pm.module, \
                    NOT EXISTS (SELECT 1 FROM json_each(m.dependencies) d \
                                WHERE NOT EXISTS (SELECT 1 FROM tenant_modules dm \
                                                  WHERE dm.tenant_id = s.tenant_id AND dm.module = d.value \
                                                    AND dm.status IN ('ENABLED', 'UP_TO_DATE'))) \
             FROM subscriptions s JOIN plans p ON p.id = s.plan_id \
             JOIN plan_modules pm ON pm.plan_id = p.id \
             JOIN core_modules m ON m.slug = pm.module JOIN tenants t ON t.id = s.tenant_id \
             WHERE s.status = 'active' AND (s.expires_at IS NULL OR s.expires_at > ?3) \
               AND (?1 IS NULL OR p.slug = ?1) AND (?2 IS NULL OR pm.module = ?2) \
               AND (m.maturity IN ('RC', 'GA', 'MAINTENANCE') OR (m.maturity = 'BETA' AND t.beta_opt_in))",
        )
        .bind(plan)
        .bind(module)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO temp.steward_sync_new (tenant_id, module, plan) \
             SELECT w.tenant_id, w.module, min(w.plan) FROM temp.steward_sync_wanted w \
             WHERE NOT EXISTS (SELECT 1 FROM tenant_modules tm \
                               WHERE tm.tenant_id = w.tenant_id AND tm.module = w.module) \
               AND w.dependencies_enabled \
               AND EXISTS (SELECT 1 FROM core_module_versions v WHERE v.module = w.module) \
             GROUP BY w.tenant_id, w.module",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO tenant_modules (tenant_id, module, status, version_id, status_reason, \
                                         requested_at, updated_at) \
             SELECT n.tenant_id, n.module, 'PROVISIONING', \
                    (SELECT v.id FROM core_module_versions v WHERE v.module = n.module \
                     ORDER BY v.migrated_at IS NULL, v.major DESC, v.minor DESC, v.patch DESC LIMIT 1), \
                    'added by plan ' || n.plan, ?1, ?1 \
             FROM temp.steward_sync_new n",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO audit_logs (at, actor, action, tenant_id, module, entity, after) \
             SELECT ?1, ?2, 'plan.sync', tenant_id, module, 'tenant_module', '{\"status\":\"PROVISIONING\"}' \
             FROM temp.steward_sync_new",
        )
        .bind(now)
        .bind(actor)
        .execute(&mut *tx)
        .await?;
        let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "WITH subscribed AS (SELECT plan, module, count(*) AS n FROM temp.steward_sync_wanted \
                                 GROUP BY plan, module), \
                  synced AS (SELECT plan, module, count(*) AS n FROM temp.steward_sync_new \
                             GROUP BY plan, module), \
                  skipped AS (SELECT plan, module, count(DISTINCT tenant_id) AS n \
                              FROM temp.steward_sync_wanted w WHERE NOT w.dependencies_enabled \
                                AND NOT EXISTS (SELECT 1 FROM tenant_modules tm \
                                                WHERE tm.tenant_id = w.tenant_id AND tm.module = w.module) \
                              GROUP BY plan, module) \
             SELECT s.plan, s.module, coalesce(y.n, 0), s.n, coalesce(k.n, 0) FROM subscribed s \
             LEFT JOIN synced y ON y.plan = s.plan AND y.module = s.module \
             LEFT JOIN skipped k ON k.plan = s.plan AND k.module = s.module ORDER BY s.plan, s.module",
        )
        .fetch_all(&mut *tx)
        .await?;
        for statement in [
            "DELETE FROM temp.steward_sync_wanted",
            "DELETE FROM temp.steward_sync_new",
        ] {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
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
             WHERE tenant_id IS ?1 ORDER BY id DESC LIMIT ?2",
        )
        .bind(tenant_id)
        .bind(limit.clamp(1, 10_000))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditRecord {
                    id: row.try_get("id")?,
                    at: from_ms(row.try_get("at")?)?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    tenant_id: row.try_get("tenant_id")?,
                    module: row.try_get("module")?,
                    entity: row.try_get("entity")?,
                    before: json_text(row, "before")?,
                    after: json_text(row, "after")?,
                })
            })
            .collect()
    }
}

/// See [`crate::store::StepTx::module_migrate`]. SQLite has no roles and no row-level
/// security: the record says so, and tenant isolation is the application's there. The
/// step transaction holds the write lock, which serialises migrations.
pub(super) async fn migrate_module(
    conn: &mut SqliteConnection,
    module: &str,
    version_id: i64,
) -> StoreResult<MigrationReport> {
    let slug = Slug::parse(module)?;
    let rows = sqlx::query(
        "SELECT id, version, up_sql, tables_created, migrated_at IS NOT NULL AS migrated \
         FROM core_module_versions WHERE module = ?1 ORDER BY major, minor, patch",
    )
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
                tables: json_text(row, "tables_created")?
                    .map(|v| serde_json::from_value(v).map_err(corrupt))
                    .transpose()?
                    .unwrap_or_default(),
                migrated: row.try_get("migrated")?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    let plan = MigrationPlan::new(&slug, versions, version_id)?;
    let mut report = plan.report(
        false,
        Some(
            "SQLite has no roles and no row-level security: no grants or policies were \
             created, tenant isolation is the application's"
                .into(),
        ),
    );
    if plan.pending.is_empty() {
        return Ok(report);
    }
    sqlx::query("SAVEPOINT module_migration")
        .execute(&mut *conn)
        .await?;
    let mut outcome = Ok(());
    for version in &plan.pending {
        outcome = create_tables(conn, &version.tables, &version.up_sql).await;
        if outcome.is_err() {
            break;
        }
    }
    if outcome.is_ok() {
        outcome = install_audit_triggers(conn, &slug, &plan.tables).await;
    }
    if let Err(err) = outcome {
        sqlx::query("ROLLBACK TO SAVEPOINT module_migration")
            .execute(&mut *conn)
            .await?;
        sqlx::query("RELEASE SAVEPOINT module_migration")
            .execute(&mut *conn)
            .await?;
        return Err(as_migration_error(err));
    }
    sqlx::query("RELEASE SAVEPOINT module_migration")
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE core_module_versions SET migrated_at = ?2 \
         WHERE id IN (SELECT value FROM json_each(?1))",
    )
    .bind(json!(plan.pending.iter().map(|v| v.id).collect::<Vec<_>>()).to_string())
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    report.created = true;
    Ok(report)
}

/// Run a version's SQL, check its declared tables, index them.
async fn create_tables(
    conn: &mut SqliteConnection,
    tables: &[ModuleTable],
    up_sql: &str,
) -> StoreResult<()> {
    sqlx::Executor::execute(&mut *conn, up_sql).await?;
    for table in tables {
        let columns = columns_of(conn, table).await?;
        for needed in ["tenant_id", "created_at"] {
            if !columns.iter().any(|c| c == needed) {
                return Err(StoreError::Migration(format!(
                    "module table {table} has no {needed} column"
                )));
            }
        }
        let statement = format!(
            "CREATE INDEX {} ON {} (tenant_id, created_at)",
            quote_ident(&format!("{table}_tenant_created")),
            table.quoted()
        );
        sqlx::query(&statement).execute(&mut *conn).await?;
    }
    Ok(())
}

async fn columns_of(conn: &mut SqliteConnection, table: &ModuleTable) -> StoreResult<Vec<String>> {
    let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info(?1)")
        .bind(table.as_str())
        .fetch_all(&mut *conn)
        .await?;
    if columns.is_empty() {
        return Err(StoreError::Migration(format!(
            "the migration did not create the declared table {table}"
        )));
    }
    Ok(columns)
}

/// (Re)create the audit triggers of every module table. SQLite has no `to_json(row)`, so a
/// trigger names each column: after a version adds or drops columns they are made again.
async fn install_audit_triggers(
    conn: &mut SqliteConnection,
    slug: &Slug,
    tables: &[ModuleTable],
) -> StoreResult<()> {
    for table in tables {
        let columns = columns_of(conn, table).await?;
        // The names come from the catalog's SQL: each is checked before it goes in a trigger.
        for column in &columns {
            crate::domain::ident::check_setting_key(column).map_err(|_| {
                StoreError::Migration(format!(
                    "module table {table} has a column named {column:?}: use a-z, 0-9 and _"
                ))
            })?;
        }
        let row_json = |alias: &str| {
            let pairs: Vec<String> = columns
                .iter()
                .map(|c| format!("'{c}', {alias}.{}", quote_ident(c)))
                .collect();
            format!("json_object({})", pairs.join(", "))
        };
        let name = table.quoted();
        let module = slug.as_str(); // validated: [a-z0-9_] only
        let entity = table.as_str(); // validated likewise
        // Frozen while the tenant's module is not in use (DISABLED, SUSPENDED, …): no row is
        // written or changed for it; steward's own deletions (archive, purge) still go through.
        for op in ["INSERT", "UPDATE"] {
            let guard = quote_ident(&format!("{table}_frozen_{}", op.to_lowercase()));
            sqlx::query(&format!("DROP TRIGGER IF EXISTS {guard}"))
                .execute(&mut *conn)
                .await?;
            sqlx::query(&format!(
                "CREATE TRIGGER {guard} BEFORE {op} ON {name} FOR EACH ROW \
                 WHEN NOT EXISTS (SELECT 1 FROM tenant_modules WHERE tenant_id = NEW.tenant_id \
                   AND module = '{module}' AND status IN ('ENABLED', 'UPGRADING', 'UP_TO_DATE')) \
                 BEGIN SELECT RAISE(ABORT, 'module {module} is not in use by this tenant: its data is frozen'); END"
            ))
            .execute(&mut *conn)
            .await?;
        }
        // A purge deletes rows already in a verified export (see `steward_purging`).
        for (op, when, before, after, tenant) in [
            (
                "INSERT",
                "",
                "NULL".to_string(),
                row_json("NEW"),
                "NEW.tenant_id",
            ),
            (
                "UPDATE",
                "",
                row_json("OLD"),
                row_json("NEW"),
                "NEW.tenant_id",
            ),
            (
                "DELETE",
                "WHEN NOT EXISTS (SELECT 1 FROM steward_purging)",
                row_json("OLD"),
                "NULL".to_string(),
                "OLD.tenant_id",
            ),
        ] {
            let trigger = quote_ident(&format!("{table}_audit_{}", op.to_lowercase()));
            sqlx::query(&format!("DROP TRIGGER IF EXISTS {trigger}"))
                .execute(&mut *conn)
                .await?;
            sqlx::query(&format!(
                "CREATE TRIGGER {trigger} AFTER {op} ON {name} FOR EACH ROW {when} BEGIN \
                 INSERT INTO audit_logs (actor, action, tenant_id, module, entity, before, after) \
                 VALUES ('database', 'row.{}', {tenant}, '{module}', '{entity}', {before}, {after}); END",
                op.to_lowercase(),
            ))
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

async fn drop_audit_triggers(
    conn: &mut SqliteConnection,
    tables: &[ModuleTable],
) -> StoreResult<()> {
    for table in tables {
        for trigger in [
            "audit_insert",
            "audit_update",
            "audit_delete",
            "frozen_insert",
            "frozen_update",
        ] {
            let trigger = quote_ident(&format!("{table}_{trigger}"));
            sqlx::query(&format!("DROP TRIGGER IF EXISTS {trigger}"))
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// See [`crate::store::StepTx::module_upgrade`] (SQLite has no settings: the post-upgrade SQL
/// runs once).
pub(super) async fn upgrade_module(
    conn: &mut SqliteConnection,
    module: &str,
    version_id: i64,
    tenants: &[TenantId],
) -> StoreResult<MigrationReport> {
    let slug = Slug::parse(module)?;
    let (pre, post): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT pre_upgrade_sql, post_upgrade_sql FROM core_module_versions \
         WHERE id = ?1 AND module = ?2",
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
        if let Some(pre) = pre.as_deref().filter(|s| !s.trim().is_empty()) {
            sqlx::Executor::execute(&mut *conn, pre).await?;
        }
        // The triggers name columns a version may change: off during the migration, back after.
        let tables: Vec<ModuleTable> = sqlx::query_scalar::<_, String>(
            "SELECT tables_created FROM core_module_versions WHERE module = ?1",
        )
        .bind(slug.as_str())
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|t| serde_json::from_str::<Vec<String>>(t).map_err(corrupt))
        .collect::<StoreResult<Vec<_>>>()?
        .into_iter()
        .flatten()
        .map(|t| ModuleTable::parse(&slug, &t).map_err(StoreError::from))
        .collect::<StoreResult<_>>()?;
        drop_audit_triggers(conn, &tables).await?;
        let report = migrate_module(conn, slug.as_str(), version_id).await?;
        let through: Vec<ModuleTable> = report
            .tables
            .iter()
            .map(|t| ModuleTable::parse(&slug, t))
            .collect::<Result<_, _>>()?;
        if let Some(post) = post.as_deref().filter(|s| !s.trim().is_empty())
            && !tenants.is_empty()
        {
            // As on PostgreSQL, the migration's row changes touch every tenant's rows
            // (frozen ones included) and are audited as the upgrade, not row by row.
            drop_audit_triggers(conn, &through).await?;
            sqlx::Executor::execute(&mut *conn, post).await?;
        }
        install_audit_triggers(conn, &slug, &through).await?;
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
            sqlx::query("RELEASE SAVEPOINT module_upgrade")
                .execute(&mut *conn)
                .await?;
            Err(as_migration_error(err))
        }
    }
}
