//! The vocabulary of the module lifecycle: tenants, catalog modules and their versions,
//! tenant modules, audit rows, and the changes the lifecycle store takes (its trait is
//! [`crate::store::DomainStore`]).

use crate::domain::maturity::Maturity;
use crate::domain::status::TenantModuleStatus;
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
    /// An upgrade: tenants that came into use at an older version after the upgrade began
    /// (turned back on meanwhile); their rows got its post-upgrade SQL with the others', and
    /// the upgrade moves them to the new version too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub joined: Vec<TenantId>,
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
    pub(crate) fn from_row(
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

/// A rollback as the operation decided it (see [`crate::store::DomainStore::module_rollback`]).
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

/// A tenant module's request, as the operation decided it (see
/// [`crate::store::DomainStore::tenant_module_request`]).
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
    /// See [`StatusChange::tenant_seen`].
    pub tenant_seen: Option<&'a [Seen]>,
}

/// One of a tenant's modules as an operation's rule read it: its status, or `None` where the
/// tenant does not have it.
pub type Seen = (String, Option<TenantModuleStatus>);

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
    /// Only if the tenant's other modules that the operation's rule read (the dependencies a
    /// module needs, the modules that may need it) are still as it saw them: the rule holds
    /// against a concurrent change of one of them. Checked with their rows and this one
    /// locked, in module order.
    pub tenant_seen: Option<&'a [Seen]>,
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
            tenant_seen: None,
        }
    }

    /// With a reason.
    pub fn because(mut self, reason: &'a str) -> Self {
        self.reason = Some(reason);
        self
    }
}
