//! Storage of the module lifecycle: tenants, the catalog, tenant modules and the audit log.
//!
//! Every change of a tenant module's status or settings, and of a module's maturity, is
//! checked against the rules of [`crate::domain`] under a row lock and written together with
//! its `audit_logs` row (actor, action, before, after), in one transaction: a refused change
//! changes nothing, an accepted one is never unaudited.

use super::StoreResult;
use crate::domain::ident::ModuleTable;
use crate::domain::maturity::Maturity;
use crate::domain::status::TenantModuleStatus;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

/// Identifier of a tenant.
pub type TenantId = i64;

/// A tenant to create.
#[derive(Debug, Clone, Default)]
pub struct NewTenant {
    pub slug: String,
    pub name: String,
    pub internal_tester: bool,
    pub beta_opt_in: bool,
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<String>,
}

/// A tenant as stored (its webhook secret is never read back out).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantRecord {
    pub id: TenantId,
    pub slug: String,
    pub name: String,
    pub internal_tester: bool,
    pub beta_opt_in: bool,
    pub webhook_url: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A catalog module as stored.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ModuleRecord {
    pub slug: String,
    pub name: String,
    pub description: String,
    pub pricing_tier: String,
    pub maturity: Maturity,
    pub dependencies: Vec<String>,
    pub data_retention_days: Option<i32>,
    pub successor: Option<String>,
    pub sunset_date: Option<String>,
}

/// A module version to publish (its SQL is trusted catalog input; its table names are
/// validated identifiers).
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub version: String,
    pub major: i32,
    pub minor: i32,
    pub patch: i32,
    pub build_hash: String,
    pub changelog: String,
    pub up_sql: String,
    pub down_sql: String,
    pub pre_upgrade_sql: Option<String>,
    pub post_upgrade_sql: Option<String>,
    pub settings_schema: Option<Value>,
    pub tables_created: Vec<String>,
}

/// A published version, without its SQL.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionRecord {
    pub id: i64,
    pub module: String,
    pub version: String,
    pub major: i32,
    pub tables_created: Vec<String>,
    pub settings_schema: Option<Value>,
    pub migrated_at: Option<DateTime<Utc>>,
}

/// One tenant's module.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TenantModuleRecord {
    pub tenant_id: TenantId,
    pub module: String,
    pub status: TenantModuleStatus,
    pub version_id: Option<i64>,
    pub previous_version_id: Option<i64>,
    pub status_reason: Option<String>,
    /// For a DISABLED module, the status it was turned off from (what may turn it back on
    /// depends on it: see [`crate::domain::status::check_reenable`]).
    pub disabled_from: Option<TenantModuleStatus>,
    /// When its last upgrade (or rollback) landed.
    pub upgraded_at: Option<DateTime<Utc>>,
    pub requested_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One audit row.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditRecord {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub tenant_id: Option<TenantId>,
    pub module: Option<String>,
    pub entity: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// Whose audit rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AuditAbout {
    /// Every row.
    #[default]
    Any,
    /// Rows about the catalog (no tenant).
    Catalog,
    /// Rows about one tenant.
    Tenant(TenantId),
}

/// Which audit rows to read (empty fields match everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub about: AuditAbout,
    pub module: Option<String>,
    /// Actions starting with this (`status`, `row.`, `settings`…).
    pub action: Option<String>,
    /// Rows written by this actor (exactly, e.g. `api:ops`).
    pub actor: Option<String>,
    /// Only rows older than this id (paging, newest first).
    pub before_id: Option<i64>,
    /// Only rows newer than this id: the page just above it (still newest first).
    pub after_id: Option<i64>,
    /// 1 to 10,000.
    pub limit: i64,
}

/// What creating a module version's tables did (kept as the tenant module's provisioning
/// record).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MigrationReport {
    pub module: String,
    pub version: String,
    pub tables: Vec<String>,
    /// This call created the tables; `false` when an earlier one had (they are shared by all
    /// tenants of the module).
    pub created: bool,
    /// `tenant_id = current_setting('app.current_tenant_id')` policies on every table.
    pub row_level_security: bool,
    /// Least-privilege grants to `tenant_app_role`.
    pub grants: bool,
    /// What the backend could not do, said plainly.
    pub note: Option<String>,
}

/// How a subscription stands (`subscriptions.status`).
pub const SUBSCRIPTION_STATUSES: [&str; 4] = ["active", "inactive", "cancelled", "expired"];

/// One line of a plan-module sync's summary: how many tenants of `plan` got `module`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PlanSynced {
    pub plan: String,
    pub module: String,
    /// Tenants that got the module now (PROVISIONING), out of `subscribed` active ones.
    pub synced: u64,
    pub subscribed: u64,
    /// Tenants left without it because a module it depends on is not enabled for them
    /// (a later sync gives it once it is).
    pub skipped_missing_dependencies: u64,
    /// Why tenants were skipped, when some were.
    pub skipped_reason: Option<String>,
}

impl PlanSynced {
    /// A summary row as both backends read it: plan, module, synced, subscribed.
    pub(super) fn from_row(
        (plan, module, synced, subscribed, skipped): (String, String, i64, i64, i64),
    ) -> Self {
        let skipped = u64::try_from(skipped).unwrap_or(0);
        PlanSynced {
            plan,
            module,
            synced: u64::try_from(synced).unwrap_or(0),
            subscribed: u64::try_from(subscribed).unwrap_or(0),
            skipped_missing_dependencies: skipped,
            skipped_reason: (skipped > 0).then(|| {
                "a module it depends on is not enabled for these tenants: they get it on a \
                 later sync, once it is"
                    .to_string()
            }),
        }
    }
}

/// A failed write of a dump or export, as a storage error.
pub(super) fn io_error(err: std::io::Error) -> super::StoreError {
    super::StoreError::Database(sqlx::Error::Io(err))
}

/// A rollback as the operation decided it (see [`DomainStore::module_rollback`]).
#[derive(Debug, Clone)]
pub struct RollbackPlan<'a> {
    pub module: &'a str,
    /// The versions to undo, latest first.
    pub undo: &'a [i64],
    /// The version the tenants go back to.
    pub previous: i64,
    pub tenants: &'a [TenantId],
    /// Every tenant row of the module as the operation read it: (tenant, status, version).
    pub seen: &'a [(TenantId, TenantModuleStatus, Option<i64>)],
    pub reason: &'a str,
    pub actor: &'a str,
}

/// A version's table names are module table identifiers of its module (`tenant_<module>_…`):
/// checked before it is published, since provisioning builds SQL from them.
pub(super) fn check_version(module: &str, version: &NewVersion) -> StoreResult<()> {
    let slug = crate::domain::ident::Slug::parse(module)?;
    for table in &version.tables_created {
        crate::domain::ident::ModuleTable::parse(&slug, table)?;
    }
    Ok(())
}

/// How many tenants a seed creates: at least one.
pub(super) fn check_seed_count(count: i64) -> StoreResult<()> {
    if count < 1 {
        return Err(super::StoreError::InvalidInput(format!(
            "a seed creates at least one tenant, not {count}"
        )));
    }
    Ok(())
}

/// The request names a tenant that exists and a version of its module: the rows are written
/// without foreign keys (see migration 0005), so this is checked in the transaction.
pub(super) fn check_request_refers(found: i64, request: &ModuleRequest<'_>) -> StoreResult<()> {
    if found == 1 {
        Ok(())
    } else {
        Err(super::StoreError::InvalidInput(format!(
            "no tenant {}, or no version {} of module `{}`",
            request.tenant_id, request.version_id, request.module
        )))
    }
}

/// Do the module's tenant rows (tenant, status, version, by tenant) match what the
/// operation saw?
pub(super) fn rows_as_seen(
    rows: &[(TenantId, String, Option<i64>)],
    seen: &[(TenantId, TenantModuleStatus, Option<i64>)],
) -> bool {
    rows.len() == seen.len()
        && rows
            .iter()
            .zip(seen)
            .all(|((t, s, v), (st, ss, sv))| t == st && s == ss.as_str() && v == sv)
}

/// A tenant module's request, as the operation decided it (see
/// [`DomainStore::tenant_module_request`]).
#[derive(Debug, Clone)]
pub struct ModuleRequest<'a> {
    pub tenant_id: TenantId,
    pub module: &'a str,
    pub version_id: i64,
    pub status: TenantModuleStatus,
    pub reason: Option<&'a str>,
    /// What the operation saw: no row (`None`) or a row in this status.
    pub expected: Option<TenantModuleStatus>,
    pub actor: &'a str,
}

/// A requested status change of a tenant module.
#[derive(Debug, Clone)]
pub struct StatusChange<'a> {
    pub tenant_id: TenantId,
    pub module: &'a str,
    pub to: TenantModuleStatus,
    /// Only from this status (checked under the lock): an approval decides a pending request
    /// and nothing else.
    pub from: Option<TenantModuleStatus>,
    /// Why (shown to operators; `ERROR` keeps the failure here).
    pub reason: Option<&'a str>,
    /// Who: a user, `system`, a workflow run.
    pub actor: &'a str,
    /// The audit action, e.g. `module.approve`.
    pub action: &'a str,
    /// What provisioning did, recorded with the move (`tenant_modules.provisioning`).
    pub provisioning: Option<&'a Value>,
    /// An upgrade (or a rollback) lands: the module is now at this version, the one it was
    /// at becomes `previous_version_id`, and `upgraded_at` is now.
    pub set_version: Option<i64>,
    /// Only if the tenant module has not changed since then (its `updated_at`), checked under
    /// the lock: an archive deletes only what its export saw.
    pub unchanged_since: Option<DateTime<Utc>>,
    /// Versions whose post-upgrade SQL runs for this tenant before the move, oldest first:
    /// a tenant that was off during an upgrade catches up when it is turned back on (on
    /// PostgreSQL, with `app.current_tenant_id` set; SQLite's post-upgrade SQL ran for every
    /// tenant during the upgrade, so there it has nothing left to do).
    pub catch_up: &'a [i64],
}

impl<'a> StatusChange<'a> {
    /// A plain move of `tenant_id`'s `module` to `to`, only from `from`, by `actor` as
    /// `action`; the optional parts are set on the returned value.
    pub fn new(
        tenant_id: TenantId,
        module: &'a str,
        from: Option<TenantModuleStatus>,
        to: TenantModuleStatus,
        actor: &'a str,
        action: &'a str,
    ) -> Self {
        Self {
            tenant_id,
            module,
            to,
            from,
            reason: None,
            actor,
            action,
            provisioning: None,
            set_version: None,
            unchanged_since: None,
            catch_up: &[],
        }
    }

    /// With a reason.
    pub fn because(mut self, reason: &'a str) -> Self {
        self.reason = Some(reason);
        self
    }
}

/// Settings keys are identifiers (see [`crate::domain::settings::check_keys`]); checked
/// again here because they end up in SQL.
pub fn check_settings(settings: &Value) -> Result<(), crate::domain::DomainError> {
    crate::domain::settings::check_keys(settings)
}

/// Lifecycle storage; every [`super::JobStore`] implements it.
#[async_trait]
pub trait DomainStore: Send + Sync {
    /// Create a tenant.
    async fn tenant_create(&self, tenant: &NewTenant) -> StoreResult<TenantRecord>;

    /// One tenant.
    async fn tenant_get(&self, id: TenantId) -> StoreResult<Option<TenantRecord>>;

    /// These tenants (those that exist), by id.
    async fn tenants_get(&self, ids: &[TenantId]) -> StoreResult<Vec<TenantRecord>>;

    /// Create or update a catalog module. Its maturity is set only on creation: later moves
    /// go through [`DomainStore::module_set_maturity`]. Audited.
    async fn module_put(&self, module: &ModuleRecord, actor: &str) -> StoreResult<()>;

    /// One catalog module.
    async fn module_get(&self, slug: &str) -> StoreResult<Option<ModuleRecord>>;

    /// Every catalog module, by slug.
    async fn modules_list(&self) -> StoreResult<Vec<ModuleRecord>>;

    /// Move a module's maturity (checked against [`Maturity::check_move`]); returns the
    /// previous maturity. Audited.
    async fn module_set_maturity(
        &self,
        slug: &str,
        to: Maturity,
        actor: &str,
    ) -> StoreResult<Maturity>;

    /// Publish a version of a module; publishing the same version again changes nothing and
    /// returns the stored one.
    async fn version_publish(
        &self,
        module: &str,
        version: &NewVersion,
    ) -> StoreResult<VersionRecord>;

    /// A module's versions, oldest first.
    async fn versions_of(&self, module: &str) -> StoreResult<Vec<VersionRecord>>;

    /// Record a tenant's request for a module at `version_id`, in `status` (PENDING_APPROVAL
    /// or PROVISIONING, as the operation decided), with `reason`, in one transaction. Written
    /// only if the tenant module is still as the operation saw it (`expected`: `None` when it
    /// had none, else its status), checked under a row lock; otherwise a conflict. Audited.
    async fn tenant_module_request(
        &self,
        request: &ModuleRequest<'_>,
    ) -> StoreResult<TenantModuleRecord>;

    /// Move a tenant module's status, checked against [`TenantModuleStatus::check_move`]
    /// under a row lock. Audited.
    async fn tenant_module_move(
        &self,
        change: &StatusChange<'_>,
    ) -> StoreResult<TenantModuleRecord>;

    /// One tenant module.
    async fn tenant_module_get(
        &self,
        tenant_id: TenantId,
        module: &str,
    ) -> StoreResult<Option<TenantModuleRecord>>;

    /// A tenant's modules, by slug.
    async fn tenant_modules(&self, tenant_id: TenantId) -> StoreResult<Vec<TenantModuleRecord>>;

    /// Replace a tenant module's settings (a JSON object whose keys are checked identifiers);
    /// audited with the settings before and after. Returns the previous settings.
    async fn settings_set(
        &self,
        tenant_id: TenantId,
        module: &str,
        settings: &Value,
        actor: &str,
    ) -> StoreResult<Value>;

    /// A tenant module's settings (`{}` when none were set).
    async fn settings_get(&self, tenant_id: TenantId, module: &str) -> StoreResult<Value>;

    /// Tenant modules in `status` that have not moved for at least `idle` (oldest first).
    async fn tenant_modules_stuck(
        &self,
        status: TenantModuleStatus,
        idle: std::time::Duration,
        limit: i64,
    ) -> StoreResult<Vec<TenantModuleRecord>>;

    /// Every tenant's record of a module, by tenant.
    async fn module_tenants(&self, module: &str) -> StoreResult<Vec<TenantModuleRecord>>;

    /// Write the rows of a module table (all, or one tenant's), one JSON object per line, to
    /// `out` (streamed: memory stays flat); returns how many rows.
    async fn module_table_dump(
        &self,
        table: &ModuleTable,
        tenant: Option<TenantId>,
        out: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
    ) -> StoreResult<u64>;

    /// Apply a rollback the operation decided ([`RollbackPlan`]), in one transaction under
    /// the migration lock, only if the module's tenant rows are still exactly as the
    /// operation saw them (`plan.seen`; else a conflict and nothing changes): the down SQL
    /// of `plan.undo` in that order, those versions no longer migrated, and every tenant of
    /// `plan.tenants` UP_TO_DATE → ENABLED at `plan.previous`, audited.
    async fn module_rollback(&self, plan: &RollbackPlan<'_>) -> StoreResult<()>;

    /// Seed `count` tenants (`<prefix>-<n>`) each with an active subscription to `plan`, in
    /// set-based statements (benchmarks and demos). Returns how many were created.
    async fn tenants_seed(&self, prefix: &str, count: i64, plan: &str) -> StoreResult<u64>;

    /// Create a plan; returns its id.
    async fn plan_create(&self, slug: &str, name: &str) -> StoreResult<i64>;

    /// Add a module to a plan (`true`) or find it there already (`false`). Audited.
    async fn plan_add_module(&self, plan: &str, module: &str, actor: &str) -> StoreResult<bool>;

    /// Take a module out of a plan; tenants that have it keep it. Audited.
    async fn plan_remove_module(&self, plan: &str, module: &str, actor: &str) -> StoreResult<bool>;

    /// Subscribe a tenant to a plan with a status (one of [`SUBSCRIPTION_STATUSES`]).
    async fn subscription_create(
        &self,
        tenant_id: TenantId,
        plan: &str,
        status: &str,
    ) -> StoreResult<i64>;

    /// Give every tenant with an active subscription the modules of its plan (one plan, or
    /// all; one module, or all) that it does not have yet, as PROVISIONING, in set-based
    /// statements, audited; never removes anything, and a second sync changes nothing.
    /// Modules closed to new tenants (not RC, GA, MAINTENANCE, or BETA for opted-in tenants)
    /// are skipped. Returns a line per plan and module.
    async fn plan_sync(
        &self,
        plan: Option<&str>,
        module: Option<&str>,
        actor: &str,
    ) -> StoreResult<Vec<PlanSynced>>;

    /// The latest audit rows about a tenant (or about the catalog, with `None`), newest first.
    async fn audit_list(
        &self,
        tenant_id: Option<TenantId>,
        limit: i64,
    ) -> StoreResult<Vec<AuditRecord>> {
        let about = match tenant_id {
            Some(tenant) => AuditAbout::Tenant(tenant),
            None => AuditAbout::Catalog,
        };
        self.audit_search(&AuditFilter {
            about,
            limit,
            ..AuditFilter::default()
        })
        .await
    }

    /// The latest audit rows matching a filter, newest first.
    async fn audit_search(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditRecord>>;

    /// How many audit rows match a filter (its paging ignored), counting at most `cap`.
    async fn audit_count(&self, filter: &AuditFilter, cap: i64) -> StoreResult<i64>;
}
