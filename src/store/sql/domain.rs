//! [`DomainStore`] written once, for every [`SqlStore`]: tenants, the catalog, tenant modules,
//! plans and the audit log. Each write is one transaction with its audit row; the rules that
//! decide a move live in `crate::lifecycle` and `crate::domain`, and are checked again here
//! under the row lock only where a concurrent change could slip between read and write.

use crate::domain::DomainError;
use crate::domain::ident::{ModuleTable, Slug};
use crate::domain::maturity::Maturity;
use crate::domain::status::TenantModuleStatus;
use crate::store::domain::{
    AuditAbout, AuditFilter, AuditRecord, DomainStore, ModuleRecord, ModuleRequest, NewTenant,
    NewVersion, PlanSynced, RollbackPlan, SUBSCRIPTION_STATUSES, Seen, StatusChange, TenantId,
    TenantModuleRecord, TenantRecord, VersionRecord, check_request_refers, check_seed_count,
    check_version, rows_as_seen,
};
use crate::store::sql::{Arg, Conn, Row, Sql, SqlStore, corrupt, parse, sql};
use crate::store::{StoreError, StoreResult};
use async_trait::async_trait;
use serde_json::{Value, json};

const TENANT_COLUMNS: &str =
    "id, slug, name, internal_tester, beta_opt_in, webhook_url, created_at";
const MODULE_COLUMNS: &str = "slug, name, description, pricing_tier, maturity, dependencies, \
     data_retention_days, successor, CAST(sunset_date AS TEXT) AS sunset_date";
const VERSION_COLUMNS: &str =
    "id, module, version, major, tables_created, settings_schema, migrated_at";
const TENANT_MODULE_COLUMNS: &str = "tenant_id, module, status, version_id, previous_version_id, \
     status_reason, requested_at, updated_at, disabled_from, upgraded_at";

fn tenant_from(row: &dyn Row) -> StoreResult<TenantRecord> {
    Ok(TenantRecord {
        id: row.int("id")?,
        slug: row.text("slug")?,
        name: row.text("name")?,
        internal_tester: row.flag("internal_tester")?,
        beta_opt_in: row.flag("beta_opt_in")?,
        webhook_url: row.opt_text("webhook_url")?,
        created_at: row.time("created_at")?,
    })
}

fn module_from(row: &dyn Row) -> StoreResult<ModuleRecord> {
    Ok(ModuleRecord {
        slug: row.text("slug")?,
        name: row.text("name")?,
        description: row.text("description")?,
        pricing_tier: row.text("pricing_tier")?,
        maturity: parse(row, "maturity")?,
        dependencies: serde_json::from_value(row.json("dependencies")?).map_err(corrupt)?,
        data_retention_days: row.opt_int32("data_retention_days")?,
        successor: row.opt_text("successor")?,
        sunset_date: row.opt_text("sunset_date")?,
    })
}

fn version_from(row: &dyn Row) -> StoreResult<VersionRecord> {
    Ok(VersionRecord {
        id: row.int("id")?,
        module: row.text("module")?,
        version: row.text("version")?,
        major: row.int32("major")?,
        tables_created: serde_json::from_value(row.json("tables_created")?).map_err(corrupt)?,
        settings_schema: row.opt_json("settings_schema")?,
        migrated_at: row.opt_time("migrated_at")?,
    })
}

pub(crate) fn tenant_module_from(row: &dyn Row) -> StoreResult<TenantModuleRecord> {
    Ok(TenantModuleRecord {
        tenant_id: row.int("tenant_id")?,
        module: row.text("module")?,
        status: parse(row, "status")?,
        version_id: row.opt_int("version_id")?,
        previous_version_id: row.opt_int("previous_version_id")?,
        status_reason: row.opt_text("status_reason")?,
        disabled_from: row
            .opt_text("disabled_from")?
            .map(|s| s.parse())
            .transpose()
            .map_err(corrupt)?,
        upgraded_at: row.opt_time("upgraded_at")?,
        requested_at: row.time("requested_at")?,
        updated_at: row.time("updated_at")?,
    })
}

/// One audit row, on the caller's transaction.
pub(crate) struct Audit<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub tenant_id: Option<TenantId>,
    pub module: Option<&'a str>,
    pub entity: &'a str,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

impl Audit<'_> {
    pub(crate) async fn write(self, conn: &mut dyn Conn) -> StoreResult<()> {
        conn.execute(sql!(
            "INSERT INTO audit_logs (actor, action, tenant_id, module, entity, before, after) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            self.actor,
            self.action,
            self.tenant_id,
            self.module,
            self.entity,
            self.before,
            self.after,
        ))
        .await?;
        Ok(())
    }
}

fn to_json(value: &impl serde::Serialize) -> StoreResult<Value> {
    serde_json::to_value(value).map_err(corrupt)
}

fn snapshot(record: &TenantModuleRecord) -> Value {
    json!({"status": record.status, "version_id": record.version_id, "reason": record.status_reason})
}

async fn plan_id(conn: &mut dyn Conn, plan: &str) -> StoreResult<i64> {
    conn.fetch_optional(sql!("SELECT id FROM plans WHERE slug = $1", plan))
        .await?
        .map(|row| row.int("id"))
        .transpose()?
        .ok_or_else(|| StoreError::InvalidInput(format!("no plan `{plan}`")))
}

async fn tenant_module_locked(
    conn: &mut dyn Conn,
    tenant_id: TenantId,
    module: &str,
) -> StoreResult<Option<TenantModuleRecord>> {
    conn.fetch_optional(sql!(
        format!(
            "SELECT {TENANT_MODULE_COLUMNS} FROM tenant_modules \
             WHERE tenant_id = $1 AND module = $2 {{for_update}}"
        ),
        tenant_id,
        module
    ))
    .await?
    .as_deref()
    .map(tenant_module_from)
    .transpose()
}

/// Lock the rows of `module` and of the tenant's modules an operation's rule read (`seen`,
/// see [`StatusChange::tenant_seen`]), in module order, and check that those are still as it
/// saw them; else a conflict.
async fn tenant_as_seen(
    conn: &mut dyn Conn,
    tenant_id: TenantId,
    module: &str,
    seen: Option<&[Seen]>,
) -> StoreResult<()> {
    let Some(seen) = seen else {
        return Ok(());
    };
    // Plan sync writes the table under a SHARE ROW EXCLUSIVE lock and takes no row lock: this
    // waits for it to end, so the reads below see what it inserted (SQLite: the write lock).
    let wait_for_sync = conn.dialect().pick(
        "LOCK TABLE tenant_modules IN ROW EXCLUSIVE MODE",
        "SELECT 1",
    );
    conn.execute(sql!(wait_for_sync)).await?;
    let mut names: Vec<String> = seen.iter().map(|(name, _)| name.clone()).collect();
    names.push(module.to_string());
    conn.fetch_all(sql!(
        "SELECT module FROM tenant_modules WHERE tenant_id = $1 AND module = ANY($2) \
         ORDER BY module {for_update}",
        tenant_id,
        names.clone()
    ))
    .await?;
    // Read again once they are locked: a statement that waited for a lock sees the rows it
    // locked as they are now, but not a row another transaction inserted meanwhile (on
    // PostgreSQL a statement reads what was committed when it began).
    let rows = conn
        .fetch_all(sql!(
            "SELECT module, status FROM tenant_modules WHERE tenant_id = $1 AND module = ANY($2)",
            tenant_id,
            names
        ))
        .await?;
    let mut now = std::collections::HashMap::new();
    for row in &rows {
        now.insert(
            row.text("module")?,
            parse::<TenantModuleStatus>(&**row, "status")?,
        );
    }
    let changed = |(name, was): &&Seen| {
        !TenantModuleStatus::alike_for_dependencies(now.get(name).copied(), *was)
    };
    if let Some((changed, _)) = seen.iter().find(changed) {
        return Err(StoreError::Conflict(format!(
            "tenant {tenant_id}'s module `{changed}` changed while the change of `{module}` \
             was decided: try again"
        )));
    }
    Ok(())
}

/// A tenant module coming into use is at the version its module's tables are at (the latest
/// installed), or a conflict: an upgrade landed after the move was decided, and deciding it
/// again catches the tenant up.
async fn at_installed_version(
    conn: &mut dyn Conn,
    change: &StatusChange<'_>,
    current: &TenantModuleRecord,
) -> StoreResult<()> {
    let installed = conn
        .fetch_optional(sql!(
            "SELECT id, version FROM core_module_versions \
             WHERE module = $1 AND migrated_at IS NOT NULL \
             ORDER BY major DESC, minor DESC, patch DESC LIMIT 1",
            change.module
        ))
        .await?;
    match installed {
        Some(row) if Some(row.int("id")?) != change.set_version.or(current.version_id) => {
            Err(StoreError::Conflict(format!(
                "`{}` was upgraded to {} while this change was decided: try again",
                change.module,
                row.text("version")?
            )))
        }
        _ => Ok(()),
    }
}

/// Move a tenant module's status on the caller's transaction: locked, checked against the
/// rules (and `change.from`), caught up, updated and audited. Shared by [`DomainStore`] and
/// the step transactions of the lifecycle workflows.
pub(crate) async fn move_status(
    conn: &mut dyn Conn,
    change: &StatusChange<'_>,
) -> StoreResult<TenantModuleRecord> {
    // A tenant module coming into use must be at the version its module's tables are at
    // (checked below): under the migration lock, shared (tenants come into use side by side),
    // which an upgrade holds alone to its commit (see `modules::upgrade`), so the two cannot
    // pass each other.
    let entering_use = change.to.is_active() && change.from.is_none_or(|from| !from.is_active());
    if entering_use {
        conn.migration_lock(true).await?;
    }
    tenant_as_seen(conn, change.tenant_id, change.module, change.tenant_seen).await?;
    let current = tenant_module_locked(conn, change.tenant_id, change.module)
        .await?
        .ok_or_else(|| {
            StoreError::InvalidInput(format!(
                "tenant {} has no module `{}`",
                change.tenant_id, change.module
            ))
        })?;
    let moved = |what| DomainError::InvalidTransition {
        what,
        from: current.status.as_str(),
        to: change.to.as_str(),
    };
    if change.from.is_some_and(|from| from != current.status) {
        return Err(moved("tenant module (it moved meanwhile)").into());
    }
    if change
        .unchanged_since
        .is_some_and(|at| at.timestamp_micros() != current.updated_at.timestamp_micros())
    {
        return Err(moved("tenant module (it changed since it was read)").into());
    }
    current.status.check_move(change.to)?;
    if change.to.is_active() && !current.status.is_active() {
        at_installed_version(conn, change, &current).await?;
    }
    super::modules::catch_up(conn, change).await?;
    let row = conn
        .fetch_one(sql!(
            format!(
                "UPDATE tenant_modules SET status = $3, status_reason = $4, updated_at = {{now}}, \
                     disabled_from = CASE WHEN $3 = 'DISABLED' THEN status ELSE NULL END, \
                     provisioning = coalesce($5, provisioning), \
                     previous_version_id = CASE WHEN CAST($6 AS BIGINT) IS NULL \
                         THEN previous_version_id ELSE version_id END, \
                     version_id = coalesce($6, version_id), \
                     upgraded_at = CASE WHEN CAST($6 AS BIGINT) IS NULL THEN upgraded_at ELSE {{now}} END, \
                     enabled_at = CASE WHEN $3 = 'ENABLED' AND enabled_at IS NULL \
                         THEN {{now}} ELSE enabled_at END \
                 WHERE tenant_id = $1 AND module = $2 RETURNING {TENANT_MODULE_COLUMNS}"
            ),
            change.tenant_id,
            change.module,
            change.to.as_str(),
            change.reason,
            change.provisioning,
            change.set_version,
        ))
        .await?;
    let record = tenant_module_from(&*row)?;
    Audit {
        actor: change.actor,
        action: change.action,
        tenant_id: Some(change.tenant_id),
        module: Some(change.module),
        entity: "tenant_module",
        before: Some(snapshot(&current)),
        after: Some(snapshot(&record)),
    }
    .write(conn)
    .await?;
    Ok(record)
}

/// Read rows with one of the record readers above.
async fn read_all<T>(
    conn: &mut dyn Conn,
    sql: crate::store::sql::Sql,
    from: fn(&dyn Row) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    conn.fetch_all(sql)
        .await?
        .iter()
        .map(|row| from(&**row))
        .collect()
}

async fn read_one<T>(
    conn: &mut dyn Conn,
    sql: crate::store::sql::Sql,
    from: fn(&dyn Row) -> StoreResult<T>,
) -> StoreResult<Option<T>> {
    conn.fetch_optional(sql)
        .await?
        .as_deref()
        .map(from)
        .transpose()
}

#[async_trait]
impl<S: SqlStore> DomainStore for S {
    async fn tenant_create(&self, tenant: &NewTenant) -> StoreResult<TenantRecord> {
        let mut tx = self.write().await?;
        let row = tx
            .fetch_one(sql!(
                format!(
                    "INSERT INTO tenants (slug, name, internal_tester, beta_opt_in, webhook_url, \
                         webhook_secret) \
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING {TENANT_COLUMNS}"
                ),
                &tenant.slug,
                &tenant.name,
                tenant.internal_tester,
                tenant.beta_opt_in,
                &tenant.webhook_url,
                &tenant.webhook_secret,
            ))
            .await?;
        let created = tenant_from(&*row)?;
        Audit {
            actor: "system",
            action: "tenant.create",
            tenant_id: Some(created.id),
            module: None,
            entity: "tenant",
            before: None,
            after: Some(to_json(&created)?),
        }
        .write(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(created)
    }

    async fn tenant_get(&self, id: TenantId) -> StoreResult<Option<TenantRecord>> {
        let sql = sql!(
            format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1"),
            id
        );
        read_one(&mut *self.read().await?, sql, tenant_from).await
    }

    async fn tenants_get(&self, ids: &[TenantId]) -> StoreResult<Vec<TenantRecord>> {
        let sql = sql!(
            format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = ANY($1) ORDER BY id"),
            ids
        );
        read_all(&mut *self.read().await?, sql, tenant_from).await
    }

    async fn module_put(&self, module: &ModuleRecord, actor: &str) -> StoreResult<()> {
        Slug::parse(&module.slug)?;
        let mut tx = self.write().await?;
        // Created here, or else read under its lock and changed: of two callers creating
        // the same module at once, the second waits for the first and is audited as a change.
        let created = tx
            .execute(sql!(
                "INSERT INTO core_modules (slug, name, description, pricing_tier, maturity, \
                     dependencies, data_retention_days, successor, sunset_date) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, CAST($9 AS {date})) \
                 ON CONFLICT (slug) DO NOTHING",
                &module.slug,
                &module.name,
                &module.description,
                &module.pricing_tier,
                module.maturity.as_str(),
                json!(module.dependencies),
                module.data_retention_days,
                &module.successor,
                &module.sunset_date,
            ))
            .await?
            == 1;
        let before = match created {
            true => None,
            false => {
                let sql = sql!(
                    format!(
                        "SELECT {MODULE_COLUMNS} FROM core_modules WHERE slug = $1 {{for_update}}"
                    ),
                    &module.slug
                );
                let before = read_one(&mut *tx, sql, module_from).await?;
                tx.execute(sql!(
                    "UPDATE core_modules SET name = $2, description = $3, pricing_tier = $4, \
                         dependencies = $5, data_retention_days = $6, successor = $7, \
                         sunset_date = CAST($8 AS {date}), updated_at = {now} WHERE slug = $1",
                    &module.slug,
                    &module.name,
                    &module.description,
                    &module.pricing_tier,
                    json!(module.dependencies),
                    module.data_retention_days,
                    &module.successor,
                    &module.sunset_date,
                ))
                .await?;
                before
            }
        };
        let mut after = module.clone();
        if let Some(before) = &before {
            after.maturity = before.maturity;
        }
        if before.as_ref() != Some(&after) {
            Audit {
                actor,
                action: "module.put",
                tenant_id: None,
                module: Some(&module.slug),
                entity: "core_module",
                before: before.as_ref().map(to_json).transpose()?,
                after: Some(to_json(&after)?),
            }
            .write(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    async fn module_get(&self, slug: &str) -> StoreResult<Option<ModuleRecord>> {
        let sql = sql!(
            format!("SELECT {MODULE_COLUMNS} FROM core_modules WHERE slug = $1"),
            slug
        );
        read_one(&mut *self.read().await?, sql, module_from).await
    }

    async fn modules_list(&self) -> StoreResult<Vec<ModuleRecord>> {
        let sql = sql!(format!(
            "SELECT {MODULE_COLUMNS} FROM core_modules ORDER BY slug"
        ));
        read_all(&mut *self.read().await?, sql, module_from).await
    }

    async fn module_set_maturity(
        &self,
        slug: &str,
        to: Maturity,
        actor: &str,
    ) -> StoreResult<Maturity> {
        let mut tx = self.write().await?;
        let current = tx
            .fetch_optional(sql!(
                "SELECT maturity FROM core_modules WHERE slug = $1 {for_update}",
                slug
            ))
            .await?
            .ok_or_else(|| {
                StoreError::InvalidInput(format!("no module `{slug}` in the catalog"))
            })?;
        let from: Maturity = parse(&*current, "maturity")?;
        from.check_move(to)?;
        tx.execute(sql!(
            "UPDATE core_modules SET maturity = $2, updated_at = {now} WHERE slug = $1",
            slug,
            to.as_str()
        ))
        .await?;
        Audit {
            actor,
            action: "module.maturity",
            tenant_id: None,
            module: Some(slug),
            entity: "core_module",
            before: Some(json!({"maturity": from})),
            after: Some(json!({"maturity": to})),
        }
        .write(&mut *tx)
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
        let mut tx = self.write().await?;
        let inserted = read_one(
            &mut *tx,
            sql!(
                format!(
                    "INSERT INTO core_module_versions (module, version, major, minor, patch, \
                         build_hash, changelog, up_sql, down_sql, pre_upgrade_sql, \
                         post_upgrade_sql, settings_schema, tables_created) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                     ON CONFLICT (module, version) DO NOTHING RETURNING {VERSION_COLUMNS}"
                ),
                module,
                &version.version,
                version.major,
                version.minor,
                version.patch,
                &version.build_hash,
                &version.changelog,
                &version.up_sql,
                &version.down_sql,
                &version.pre_upgrade_sql,
                &version.post_upgrade_sql,
                &version.settings_schema,
                json!(version.tables_created),
            ),
            version_from,
        )
        .await?;
        let record = match inserted {
            Some(record) => record,
            None => read_one(
                &mut *tx,
                sql!(
                    format!(
                        "SELECT {VERSION_COLUMNS} FROM core_module_versions \
                         WHERE module = $1 AND version = $2"
                    ),
                    module,
                    &version.version
                ),
                version_from,
            )
            .await?
            .ok_or(StoreError::Database(sqlx::Error::RowNotFound))?,
        };
        tx.commit().await?;
        Ok(record)
    }

    async fn versions_of(&self, module: &str) -> StoreResult<Vec<VersionRecord>> {
        let sql = sql!(
            format!(
                "SELECT {VERSION_COLUMNS} FROM core_module_versions WHERE module = $1 \
                 ORDER BY major, minor, patch"
            ),
            module
        );
        read_all(&mut *self.read().await?, sql, version_from).await
    }

    async fn tenant_module_request(
        &self,
        request: &ModuleRequest<'_>,
    ) -> StoreResult<TenantModuleRecord> {
        let mut tx = self.write().await?;
        tenant_as_seen(
            &mut *tx,
            request.tenant_id,
            request.module,
            request.tenant_seen,
        )
        .await?;
        let existing = tenant_module_locked(&mut *tx, request.tenant_id, request.module).await?;
        let found = tx
            .fetch_one(sql!(
                "SELECT count(*) AS n FROM tenants t, core_module_versions v \
                 WHERE t.id = $1 AND v.id = $2 AND v.module = $3",
                request.tenant_id,
                request.version_id,
                request.module
            ))
            .await?
            .int("n")?;
        check_request_refers(found, request)?;
        if existing.as_ref().map(|e| e.status) != request.expected {
            return Err(StoreError::Conflict(format!(
                "tenant {}'s module `{}` changed meanwhile ({})",
                request.tenant_id,
                request.module,
                existing.map_or("removed".into(), |e| e.status.to_string())
            )));
        }
        // A row that appeared since the read (a first request made at the same moment: there
        // was no row to lock) is replaced only if it is in the status this request expects,
        // which a status never is when it expected none.
        let row = tx
            .fetch_optional(sql!(
                format!(
                    "INSERT INTO tenant_modules (tenant_id, module, status, version_id, status_reason) \
                     VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (tenant_id, module) DO UPDATE SET status = EXCLUDED.status, \
                         version_id = EXCLUDED.version_id, previous_version_id = NULL, \
                         status_reason = EXCLUDED.status_reason, disabled_from = NULL, \
                         provisioning = NULL, requested_at = {{now}}, enabled_at = NULL, \
                         updated_at = {{now}} \
                     WHERE tenant_modules.status = CAST($6 AS TEXT) \
                     RETURNING {TENANT_MODULE_COLUMNS}"
                ),
                request.tenant_id,
                request.module,
                request.status.as_str(),
                request.version_id,
                request.reason,
                request.expected.map(TenantModuleStatus::as_str),
            ))
            .await?
            .ok_or_else(|| {
                StoreError::Conflict(format!(
                    "tenant {}'s module `{}` was requested meanwhile",
                    request.tenant_id, request.module
                ))
            })?;
        let record = tenant_module_from(&*row)?;
        Audit {
            actor: request.actor,
            action: "module.request",
            tenant_id: Some(request.tenant_id),
            module: Some(request.module),
            entity: "tenant_module",
            before: existing.as_ref().map(snapshot),
            after: Some(snapshot(&record)),
        }
        .write(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn tenant_module_move(
        &self,
        change: &StatusChange<'_>,
    ) -> StoreResult<TenantModuleRecord> {
        let mut tx = self.write().await?;
        let record = move_status(&mut *tx, change).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn tenant_module_get(
        &self,
        tenant_id: TenantId,
        module: &str,
    ) -> StoreResult<Option<TenantModuleRecord>> {
        let sql = sql!(
            format!(
                "SELECT {TENANT_MODULE_COLUMNS} FROM tenant_modules \
                 WHERE tenant_id = $1 AND module = $2"
            ),
            tenant_id,
            module
        );
        read_one(&mut *self.read().await?, sql, tenant_module_from).await
    }

    async fn tenant_modules(&self, tenant_id: TenantId) -> StoreResult<Vec<TenantModuleRecord>> {
        let sql = sql!(
            format!(
                "SELECT {TENANT_MODULE_COLUMNS} FROM tenant_modules WHERE tenant_id = $1 \
                 ORDER BY module"
            ),
            tenant_id
        );
        read_all(&mut *self.read().await?, sql, tenant_module_from).await
    }

    async fn settings_set(
        &self,
        tenant_id: TenantId,
        module: &str,
        settings: &Value,
        actor: &str,
    ) -> StoreResult<Value> {
        // Settings keys end up in SQL: checked again here.
        crate::domain::settings::check_keys(settings)?;
        let mut tx = self.write().await?;
        if tenant_module_locked(&mut *tx, tenant_id, module)
            .await?
            .is_none()
        {
            return Err(StoreError::InvalidInput(format!(
                "tenant {tenant_id} has no module `{module}`"
            )));
        }
        let before = tx
            .fetch_optional(sql!(
                "SELECT settings FROM tenant_module_settings \
                 WHERE tenant_id = $1 AND module = $2 {for_update}",
                tenant_id,
                module
            ))
            .await?
            .map(|row| row.json("settings"))
            .transpose()?;
        tx.execute(sql!(
            "INSERT INTO tenant_module_settings (tenant_id, module, settings) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id, module) DO UPDATE SET settings = EXCLUDED.settings, \
                 updated_at = {now}",
            tenant_id,
            module,
            settings
        ))
        .await?;
        Audit {
            actor,
            action: "module.settings",
            tenant_id: Some(tenant_id),
            module: Some(module),
            entity: "tenant_module_settings",
            before: before.clone(),
            after: Some(settings.clone()),
        }
        .write(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(before.unwrap_or_else(|| json!({})))
    }

    async fn settings_get(&self, tenant_id: TenantId, module: &str) -> StoreResult<Value> {
        let settings = self
            .read()
            .await?
            .fetch_optional(sql!(
                "SELECT settings FROM tenant_module_settings WHERE tenant_id = $1 AND module = $2",
                tenant_id,
                module
            ))
            .await?
            .map(|row| row.json("settings"))
            .transpose()?;
        Ok(settings.unwrap_or_else(|| json!({})))
    }

    async fn tenant_modules_stuck(
        &self,
        status: TenantModuleStatus,
        idle: std::time::Duration,
        limit: i64,
    ) -> StoreResult<Vec<TenantModuleRecord>> {
        let sql = sql!(
            format!(
                "SELECT {TENANT_MODULE_COLUMNS} FROM tenant_modules \
                 WHERE status = $1 AND updated_at <= {{now}} - $2 ORDER BY updated_at LIMIT $3"
            ),
            status.as_str(),
            // (At most some 95 years: an interval holds it, and so does a date after it.)
            idle.min(std::time::Duration::from_secs(3_000_000_000)),
            limit
        );
        read_all(&mut *self.read().await?, sql, tenant_module_from).await
    }

    async fn module_tenants(&self, module: &str) -> StoreResult<Vec<TenantModuleRecord>> {
        let sql = sql!(
            format!(
                "SELECT {TENANT_MODULE_COLUMNS} FROM tenant_modules WHERE module = $1 \
                 ORDER BY tenant_id"
            ),
            module
        );
        read_all(&mut *self.read().await?, sql, tenant_module_from).await
    }

    async fn module_table_dump(
        &self,
        table: &ModuleTable,
        tenant: Option<TenantId>,
        out: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
    ) -> StoreResult<u64> {
        let columns = crate::store::DataStore::module_table_columns(self, table).await?;
        self.table_dump(table, &columns, tenant, out).await
    }

    async fn module_rollback(&self, plan: &RollbackPlan<'_>) -> StoreResult<()> {
        let slug = Slug::parse(plan.module)?;
        let mut tx = self.write().await?;
        tx.migration_lock(false).await?;
        let rows = tx
            .fetch_all(sql!(
                "SELECT tenant_id, status, version_id FROM tenant_modules WHERE module = $1 \
                 ORDER BY tenant_id {for_update}",
                slug.as_str()
            ))
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.int("tenant_id")?,
                    r.text("status")?,
                    r.opt_int("version_id")?,
                ))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        if !rows_as_seen(&rows, plan.seen) {
            return Err(StoreError::Conflict(format!(
                "the tenants of `{slug}` changed while the rollback was decided: try again"
            )));
        }
        super::modules::undo(&mut *tx, slug.as_str(), plan.undo).await?;
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
            move_status(&mut *tx, &change).await?;
        }
        tx.commit().await
    }

    async fn tenants_seed(&self, prefix: &str, count: i64, plan: &str) -> StoreResult<u64> {
        check_seed_count(count)?;
        let mut tx = self.write().await?;
        let plan_id = plan_id(&mut *tx, plan).await?;
        // Tenants `<prefix>-1` … `<prefix>-<count>`, each subscribed to the plan.
        let before = tx
            .fetch_one(sql!("SELECT coalesce(max(id), 0) AS top FROM tenants"))
            .await?
            .int("top")?;
        tx.execute(sql!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $2) \
             INSERT INTO tenants (slug, name, created_at) \
             SELECT $1 || '-' || i, $1 || ' ' || i, {now} FROM n",
            prefix,
            count
        ))
        .await?;
        let created = tx
            .execute(sql!(
                "INSERT INTO subscriptions (tenant_id, plan_id, status, started_at) \
                 SELECT id, $2, 'active', {now} FROM tenants \
                 WHERE id > $3 AND substr(slug, 1, length($1) + 1) = $1 || '-'",
                prefix,
                plan_id,
                before
            ))
            .await?;
        tx.commit().await?;
        Ok(created)
    }

    async fn plan_create(&self, slug: &str, name: &str) -> StoreResult<i64> {
        let mut tx = self.write().await?;
        let id = tx
            .fetch_one(sql!(
                "INSERT INTO plans (slug, name) VALUES ($1, $2) RETURNING id",
                slug,
                name
            ))
            .await?
            .int("id")?;
        tx.commit().await?;
        Ok(id)
    }

    async fn plan_add_module(&self, plan: &str, module: &str, actor: &str) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let plan_id = plan_id(&mut *tx, plan).await?;
        if tx
            .fetch_optional(sql!(
                "SELECT slug FROM core_modules WHERE slug = $1",
                module
            ))
            .await?
            .is_none()
        {
            return Err(StoreError::InvalidInput(format!(
                "no module `{module}` in the catalog (plan `{plan}`)"
            )));
        }
        let added = tx
            .execute(sql!(
                "INSERT INTO plan_modules (plan_id, module) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                plan_id,
                module
            ))
            .await?
            == 1;
        if added {
            Audit {
                actor,
                action: "plan.add_module",
                tenant_id: None,
                module: Some(module),
                entity: "plan_module",
                before: None,
                after: Some(json!({"plan": plan})),
            }
            .write(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(added)
    }

    async fn plan_remove_module(&self, plan: &str, module: &str, actor: &str) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let plan_id = plan_id(&mut *tx, plan).await?;
        let removed = tx
            .execute(sql!(
                "DELETE FROM plan_modules WHERE plan_id = $1 AND module = $2",
                plan_id,
                module
            ))
            .await?
            == 1;
        if removed {
            Audit {
                actor,
                action: "plan.remove_module",
                tenant_id: None,
                module: Some(module),
                entity: "plan_module",
                before: Some(json!({"plan": plan})),
                after: None,
            }
            .write(&mut *tx)
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
        if !SUBSCRIPTION_STATUSES.contains(&status) {
            return Err(StoreError::InvalidInput(format!(
                "unknown subscription status `{status}` (one of {SUBSCRIPTION_STATUSES:?})"
            )));
        }
        let mut tx = self.write().await?;
        let plan_id = plan_id(&mut *tx, plan).await?;
        let id = tx
            .fetch_one(sql!(
                "INSERT INTO subscriptions (tenant_id, plan_id, status) VALUES ($1, $2, $3) \
                 RETURNING id",
                tenant_id,
                plan_id,
                status
            ))
            .await?
            .int("id")?;
        tx.commit().await?;
        Ok(id)
    }

    async fn plan_sync(
        &self,
        plan: Option<&str>,
        module: Option<&str>,
        actor: &str,
    ) -> StoreResult<Vec<PlanSynced>> {
        let mut tx = self.write().await?;
        if let Some(plan) = plan {
            plan_id(&mut *tx, plan).await?;
        }
        let synced = super::plan_sync::plan_sync(&mut *tx, plan, module, actor).await?;
        tx.commit().await?;
        Ok(synced)
    }

    async fn audit_search(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditRecord>> {
        let mut conn = self.read().await?;
        let (mut text, mut args) = audit_where(filter, true);
        // The page just newer than `after_id` is read upwards, then turned newest first.
        let upwards = filter.after_id.is_some() && filter.before_id.is_none();
        args.push(Arg::from(filter.limit.clamp(1, 10_000)));
        text.push_str(&format!(
            " ORDER BY id {} LIMIT ${}",
            if upwards { "ASC" } else { "DESC" },
            args.len()
        ));
        let text = format!(
            "SELECT id, at, actor, action, tenant_id, module, entity, before, after \
             FROM audit_logs WHERE true{text}"
        );
        let sql = Sql {
            text: text.into(),
            args,
        };
        let mut rows = read_all(&mut *conn, sql, |row| {
            Ok(AuditRecord {
                id: row.int("id")?,
                at: row.time("at")?,
                actor: row.text("actor")?,
                action: row.text("action")?,
                tenant_id: row.opt_int("tenant_id")?,
                module: row.opt_text("module")?,
                entity: row.text("entity")?,
                before: row.opt_json("before")?,
                after: row.opt_json("after")?,
            })
        })
        .await?;
        if upwards {
            rows.reverse();
        }
        Ok(rows)
    }

    async fn audit_count(&self, filter: &AuditFilter, cap: i64) -> StoreResult<i64> {
        let mut conn = self.read().await?;
        let (text, mut args) = audit_where(filter, false);
        args.push(Arg::from(cap.max(1)));
        let sql = Sql {
            text: format!(
                "SELECT count(*) AS n FROM (SELECT id FROM audit_logs WHERE true{text} \
                 LIMIT ${}) AS capped",
                args.len()
            )
            .into(),
            args,
        };
        conn.fetch_one(sql).await?.int("n")
    }
}

/// The conditions of an audit search (` AND …`, numbered from `$1`), with its paging or not.
fn audit_where(filter: &AuditFilter, paged: bool) -> (String, Vec<Arg>) {
    let mut args: Vec<Arg> = Vec::new();
    let mut text = String::new();
    if filter.about == AuditAbout::Catalog {
        text.push_str(" AND tenant_id IS NULL");
    }
    let mut push = |condition: &str, arg: Arg| {
        args.push(arg);
        text.push_str(&condition.replace('?', &format!("${}", args.len())));
    };
    if let AuditAbout::Tenant(tenant) = filter.about {
        push(" AND tenant_id = ?", Arg::from(tenant));
    }
    if let Some(module) = &filter.module {
        push(" AND module = ?", Arg::from(module));
    }
    if let Some(action) = &filter.action {
        // A prefix: `substr` rather than LIKE, so `_` and `%` in it mean themselves.
        push(" AND substr(action, 1, length(?)) = ?", Arg::from(action));
    }
    if let Some(actor) = &filter.actor {
        push(" AND actor = ?", Arg::from(actor));
    }
    if paged {
        if let Some(before) = filter.before_id {
            push(" AND id < ?", Arg::from(before));
        }
        if let Some(after) = filter.after_id {
            push(" AND id > ?", Arg::from(after));
        }
    }
    (text, args)
}
