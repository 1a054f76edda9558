//! A module's tables brought to a version, upgraded or undone, written once for both
//! backends: which versions still have to run, the savepoint around them, the record of what
//! ran, how a failure reads. What differs is a [`Conn`] primitive: creating a version's tables
//! with their guard and audit (PostgreSQL: triggers over the whole row, row-level security,
//! grants; SQLite: triggers that name each column, so they are dropped before a version's SQL
//! and made again after), marking steward's own changes, and scoping post-upgrade SQL to
//! tenants.

use crate::domain::ident::{ModuleTable, Slug, quote_ident};
use crate::domain::status::TenantModuleStatus;
use crate::store::domain::{MigrationReport, StatusChange, TenantId};
use crate::store::sql::{Conn, Dialect, corrupt, sql};
use crate::store::{StoreError, StoreResult};

/// One published version, as the migration needs it.
struct VersionSql {
    id: i64,
    version: String,
    up_sql: String,
    tables: Vec<String>,
    migrated: bool,
}

/// A version whose `up_sql` still has to run, with its validated tables.
struct Pending {
    id: i64,
    up_sql: String,
    tables: Vec<ModuleTable>,
}

/// Bringing a module's tables up to a target version: every earlier version not yet migrated
/// in this database runs first, in order (a fresh database gets 1.0 then 1.1 then …).
struct MigrationPlan {
    module: String,
    version: String,
    /// Every table of the module through the target version.
    tables: Vec<ModuleTable>,
    pending: Vec<Pending>,
}

impl MigrationPlan {
    /// `versions` in version order.
    fn new(slug: &Slug, versions: Vec<VersionSql>, target: i64) -> StoreResult<Self> {
        let last = versions
            .iter()
            .position(|v| v.id == target)
            .ok_or_else(|| {
                StoreError::InvalidInput(format!("module `{slug}` has no version {target}"))
            })?;
        let mut plan = MigrationPlan {
            module: slug.to_string(),
            version: versions[last].version.clone(),
            tables: Vec::new(),
            pending: Vec::new(),
        };
        for version in versions.into_iter().take(last + 1) {
            let tables = version
                .tables
                .iter()
                .map(|t| ModuleTable::parse(slug, t))
                .collect::<Result<Vec<_>, _>>()?;
            plan.tables.extend(tables.iter().cloned());
            if !version.migrated {
                plan.pending.push(Pending {
                    id: version.id,
                    up_sql: version.up_sql,
                    tables,
                });
            }
        }
        Ok(plan)
    }

    /// The record of this plan (`created` is set once it ran).
    fn report(&self, dialect: Dialect) -> MigrationReport {
        let postgres = dialect == Dialect::Postgres;
        MigrationReport {
            module: self.module.clone(),
            version: self.version.clone(),
            tables: self.tables.iter().map(|t| t.to_string()).collect(),
            created: false,
            row_level_security: postgres,
            grants: postgres,
            note: (!postgres).then(|| {
                "SQLite has no roles and no row-level security: no grants or policies were \
                 created, tenant isolation is the application's"
                    .into()
            }),
            joined: Vec::new(),
        }
    }
}

/// The statuses in which a tenant's rows of its module may be written (the module is in use,
/// [`TenantModuleStatus::is_active`]), as SQL literals: what the freeze triggers of both
/// backends test, taken from that rule rather than restated.
pub(crate) fn active_statuses() -> String {
    TenantModuleStatus::ALL
        .iter()
        .filter(|s| s.is_active())
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A database error of the catalog's SQL is the migration's failure, with the database's
/// words; anything transient (a lost connection, a deadlock, a busy SQLite file) stays what
/// it is, to be retried.
pub fn as_migration_error(err: StoreError) -> StoreError {
    if err.is_transient() {
        return err;
    }
    match err {
        StoreError::Database(sqlx::Error::Database(db)) => {
            StoreError::Migration(db.message().to_string())
        }
        other => other,
    }
}

/// The module's versions through `version_id` and which still have to run (`locked`: their
/// rows locked, under the migration lock).
async fn read_plan(
    conn: &mut dyn Conn,
    slug: &Slug,
    version_id: i64,
    locked: bool,
) -> StoreResult<MigrationPlan> {
    let lock = if locked { " {for_update}" } else { "" };
    let rows = conn
        .fetch_all(sql!(
            format!(
                "SELECT id, version, up_sql, tables_created, migrated_at IS NOT NULL AS migrated \
                 FROM core_module_versions WHERE module = $1 ORDER BY major, minor, patch{lock}"
            ),
            slug.as_str()
        ))
        .await?;
    let versions = rows
        .iter()
        .map(|row| {
            Ok(VersionSql {
                id: row.int("id")?,
                version: row.text("version")?,
                up_sql: row.text("up_sql")?,
                tables: serde_json::from_value(row.json("tables_created")?).map_err(corrupt)?,
                migrated: row.flag("migrated")?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    MigrationPlan::new(slug, versions, version_id)
}

/// End the savepoint `name`: kept when `outcome` is a success, rolled back when not.
async fn savepoint_end<T>(
    conn: &mut dyn Conn,
    name: &str,
    outcome: StoreResult<T>,
) -> StoreResult<T> {
    if outcome.is_err() {
        conn.execute(sql!(format!("ROLLBACK TO SAVEPOINT {name}")))
            .await?;
    }
    conn.execute(sql!(format!("RELEASE SAVEPOINT {name}")))
        .await?;
    outcome.map_err(as_migration_error)
}

/// The module's tables its versions declare (`installed`: of migrated versions only, and
/// only those that exist in this database), each once, in version order, with their columns
/// (none for a table that does not exist).
async fn module_tables(
    conn: &mut dyn Conn,
    slug: &Slug,
    installed: bool,
) -> StoreResult<Vec<(ModuleTable, Vec<String>)>> {
    let rows = conn
        .fetch_all(sql!(
            "SELECT tables_created FROM core_module_versions \
             WHERE module = $1 AND (NOT $2 OR migrated_at IS NOT NULL) ORDER BY major, minor, patch",
            slug.as_str(),
            installed
        ))
        .await?;
    let mut tables: Vec<(ModuleTable, Vec<String>)> = Vec::new();
    for row in rows {
        let names: Vec<String> =
            serde_json::from_value(row.json("tables_created")?).map_err(corrupt)?;
        for name in names {
            let table = ModuleTable::parse(slug, &name)?;
            if tables.iter().any(|(t, _)| *t == table) {
                continue;
            }
            let columns = super::data::table_columns(conn, table.as_str()).await?;
            if !installed || !columns.is_empty() {
                tables.push((table, columns));
            }
        }
    }
    Ok(tables)
}

/// Make the triggers of the module's installed tables as this version writes them.
async fn triggers_install(conn: &mut dyn Conn, slug: &Slug) -> StoreResult<()> {
    for (table, columns) in module_tables(conn, slug, true).await? {
        conn.table_triggers(slug, &table, &columns).await?;
    }
    Ok(())
}

/// Drop the triggers that name the columns of the module's tables (see
/// [`Conn::table_triggers_drop`]).
async fn triggers_drop(conn: &mut dyn Conn, slug: &Slug) -> StoreResult<()> {
    for (table, _) in module_tables(conn, slug, false).await? {
        conn.table_triggers_drop(&table).await?;
    }
    Ok(())
}

/// On start-up, every installed module table gets its triggers as this version writes them
/// (a deployment whose tables an older version created may lack some, e.g. the freeze on
/// DELETE), under the migration lock, in the caller's transaction.
pub async fn triggers_refresh(conn: &mut dyn Conn) -> StoreResult<()> {
    conn.migration_lock(false).await?;
    let modules = conn
        .fetch_all(sql!(
            "SELECT DISTINCT module FROM core_module_versions WHERE migrated_at IS NOT NULL"
        ))
        .await?;
    for row in modules {
        triggers_install(conn, &Slug::parse(&row.text("module")?)?).await?;
    }
    Ok(())
}

/// Run a version's SQL, then check that each table it declares exists with the columns
/// steward needs (`tenant_id`, `created_at`), index it for them, and let the backend guard it
/// ([`Conn::table_adopt`]).
async fn tables_create(conn: &mut dyn Conn, slug: &Slug, version: &Pending) -> StoreResult<()> {
    conn.roles_ensure().await?;
    conn.script(&version.up_sql).await?;
    for table in &version.tables {
        let columns = super::data::table_columns(conn, table.as_str()).await?;
        if columns.is_empty() {
            return Err(StoreError::Migration(format!(
                "the migration did not create the declared table {table}"
            )));
        }
        if let Some(needed) = ["tenant_id", "created_at"]
            .into_iter()
            .find(|needed| !columns.iter().any(|c| c == needed))
        {
            return Err(StoreError::Migration(format!(
                "module table {table} has no {needed} column"
            )));
        }
        let index = quote_ident(&format!("{table}_tenant_created"));
        let create = format!(
            "CREATE INDEX {index} ON {} (tenant_id, created_at)",
            table.quoted()
        );
        conn.execute(sql!(create)).await?;
        conn.table_adopt(slug, table).await?;
    }
    Ok(())
}

/// See [`crate::store::StepTx::module_migrate`].
pub async fn migrate(
    conn: &mut dyn Conn,
    module: &str,
    version_id: i64,
) -> StoreResult<MigrationReport> {
    let slug = Slug::parse(module)?;
    // Tenants joining an installed module only read; the lock is for those who migrate.
    let plan = read_plan(conn, &slug, version_id, false).await?;
    if plan.pending.is_empty() {
        return Ok(plan.report(conn.dialect()));
    }
    // One module migration at a time in this database: tenants provisioning the same module
    // at once wait here, then find its tables created.
    conn.migration_lock(false).await?;
    let plan = read_plan(conn, &slug, version_id, true).await?;
    let mut report = plan.report(conn.dialect());
    if plan.pending.is_empty() {
        return Ok(report);
    }
    conn.execute(sql!("SAVEPOINT module_migration")).await?;
    let outcome = async {
        for version in &plan.pending {
            tables_create(conn, &slug, version).await?;
        }
        let pending: Vec<i64> = plan.pending.iter().map(|v| v.id).collect();
        conn.execute(sql!(
            "UPDATE core_module_versions SET migrated_at = {now} WHERE id = ANY($1)",
            pending
        ))
        .await?;
        triggers_install(conn, &slug).await
    }
    .await;
    savepoint_end(conn, "module_migration", outcome).await?;
    report.created = true;
    Ok(report)
}

/// See [`crate::store::StepTx::module_upgrade`].
pub async fn upgrade(
    conn: &mut dyn Conn,
    module: &str,
    version_id: i64,
    tenants: &[TenantId],
) -> StoreResult<MigrationReport> {
    let slug = Slug::parse(module)?;
    let row = conn
        .fetch_optional(sql!(
            "SELECT pre_upgrade_sql, post_upgrade_sql FROM core_module_versions \
             WHERE id = $1 AND module = $2",
            version_id,
            slug.as_str()
        ))
        .await?
        .ok_or_else(|| {
            StoreError::InvalidInput(format!("module `{slug}` has no version {version_id}"))
        })?;
    let non_blank = |sql: Option<String>| sql.filter(|s| !s.trim().is_empty());
    let pre = non_blank(row.opt_text("pre_upgrade_sql")?);
    let post = non_blank(row.opt_text("post_upgrade_sql")?);
    // Held to the commit: a tenant that comes into use takes it too (see
    // `domain::move_status`), so one that did since the upgrade began is found here, and one
    // that does later finds the new version installed.
    conn.migration_lock(false).await?;
    let joined: Vec<TenantId> = conn
        .fetch_all(sql!(
            format!(
                "SELECT tenant_id FROM tenant_modules WHERE module = $1 \
                 AND status IN ({}) AND NOT (tenant_id = ANY($2)) ORDER BY tenant_id",
                active_statuses()
            ),
            slug.as_str(),
            tenants.to_vec()
        ))
        .await?
        .iter()
        .map(|row| row.int("tenant_id"))
        .collect::<StoreResult<_>>()?;
    let everyone: Vec<TenantId> = tenants.iter().chain(&joined).copied().collect();
    conn.execute(sql!("SAVEPOINT module_upgrade")).await?;
    let outcome = async {
        conn.privilege("migration", true).await?;
        if let Some(pre) = &pre {
            conn.script(pre).await?;
        }
        // SQLite's triggers name columns the version may change: off during its SQL.
        triggers_drop(conn, &slug).await?;
        let report = migrate(conn, slug.as_str(), version_id).await?;
        conn.privilege("migration", false).await?;
        triggers_install(conn, &slug).await?;
        if let Some(post) = post {
            // Each tenant's step touches only that tenant's rows.
            conn.post_upgrade(&everyone, &[post]).await?;
        }
        Ok::<_, StoreError>(MigrationReport { joined, ..report })
    }
    .await;
    savepoint_end(conn, "module_upgrade", outcome).await
}

/// Run the down SQL of `undo` (in that order) and mark those versions not migrated.
pub async fn undo(conn: &mut dyn Conn, module: &str, undo: &[i64]) -> StoreResult<()> {
    let slug = Slug::parse(module)?;
    let downs = conn
        .fetch_all(sql!(
            "SELECT id, down_sql FROM core_module_versions WHERE module = $1 AND id = ANY($2)",
            slug.as_str(),
            undo
        ))
        .await?;
    triggers_drop(conn, &slug).await?;
    conn.privilege("migration", true).await?;
    for id in undo {
        let mut down = None;
        for row in &downs {
            if row.int("id")? == *id {
                down = Some(row.text("down_sql")?);
            }
        }
        let down =
            down.ok_or_else(|| StoreError::InvalidInput(format!("`{slug}` has no version {id}")))?;
        conn.script(&down).await.map_err(as_migration_error)?;
    }
    conn.privilege("migration", false).await?;
    conn.execute(sql!(
        "UPDATE core_module_versions SET migrated_at = NULL WHERE id = ANY($1)",
        undo
    ))
    .await?;
    triggers_install(conn, &slug).await
}

/// Run `change.catch_up`'s post-upgrade SQL for its tenant only (see [`StatusChange`]).
pub async fn catch_up(conn: &mut dyn Conn, change: &StatusChange<'_>) -> StoreResult<()> {
    if change.catch_up.is_empty() {
        return Ok(());
    }
    let posts = conn
        .fetch_all(sql!(
            "SELECT post_upgrade_sql FROM core_module_versions WHERE module = $1 AND id = ANY($2) \
             ORDER BY major, minor, patch",
            change.module,
            change.catch_up
        ))
        .await?
        .iter()
        .filter_map(|row| row.opt_text("post_upgrade_sql").transpose())
        .collect::<StoreResult<Vec<_>>>()?;
    let posts: Vec<String> = posts.into_iter().filter(|p| !p.trim().is_empty()).collect();
    if posts.is_empty() {
        return Ok(());
    }
    conn.post_upgrade(&[change.tenant_id], &posts).await
}
