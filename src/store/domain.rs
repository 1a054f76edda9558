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
use serde_json::Value;

pub use crate::types::modules::{
    AuditAbout, AuditFilter, AuditRecord, MigrationReport, ModuleRecord, ModuleRequest, NewTenant,
    NewVersion, PlanSynced, RollbackPlan, SUBSCRIPTION_STATUSES, Seen, StatusChange, TenantId,
    TenantModuleRecord, TenantRecord, VersionRecord,
};

/// Write a dump's lines (each row as one JSON object) to `out`, streamed; how many.
pub(super) async fn write_lines(
    lines: impl futures::Stream<Item = Result<String, sqlx::Error>>,
    out: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
) -> StoreResult<u64> {
    use futures::TryStreamExt;
    use tokio::io::AsyncWriteExt;
    let io_error = |err| super::StoreError::Database(sqlx::Error::Io(err));
    let mut lines = std::pin::pin!(lines);
    let mut count = 0;
    while let Some(line) = lines.try_next().await? {
        out.write_all(line.as_bytes()).await.map_err(io_error)?;
        out.write_all(b"\n").await.map_err(io_error)?;
        count += 1;
    }
    out.flush().await.map_err(io_error)?;
    Ok(count)
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
