//! The module lifecycle as operations: a tenant requests a module, a Master Admin approves or
//! rejects it. Each decision applies the rules of [`crate::domain`] to what the store holds
//! and records the outcome through [`DomainStore`](crate::store::DomainStore) (audited).
//!
//! An admitted or approved request starts the `module_provision` workflow ([`steps`]),
//! which takes the module from PROVISIONING to ENABLED (or ERROR). Not built yet (issue #4):
//! upgrade with rollback, disable and archive.

pub mod cost;
pub mod deprecation;
pub mod purge;
mod reconciler;
pub mod steps;

pub use reconciler::ProvisioningReconciler;

/// Register every lifecycle step handler; those that export data write to `exports`.
pub fn register_steps(
    steps: &mut crate::workflow::StepRegistry,
    exports: crate::export::SharedExports,
) {
    steps::register(steps);
    purge::register(steps, exports);
    cost::register(steps);
    deprecation::register(steps);
}

use crate::domain::DomainError;
use crate::domain::availability::{self, Admission, ModuleFacts, TenantFacts};
use crate::domain::catalog::Catalog;
use crate::domain::ident::Slug;
use crate::domain::maturity::Maturity;
use crate::domain::status::TenantModuleStatus;
use crate::store::domain::{
    ModuleRecord, NewVersion, PlanSynced, StatusChange, TenantId, TenantModuleRecord,
};
use crate::store::runs::{RunId, RunState};
use crate::store::{SharedStore, StoreError};
use crate::workflow::{Engine, EngineError};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

/// Why a lifecycle operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("no tenant {0}")]
    NoTenant(TenantId),
    #[error("no module `{0}` in the catalog")]
    NoModule(String),
    #[error("module `{0}` has no such published version")]
    NoVersion(String),
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Store(StoreError),
    #[error("the workflow `{0}` is not defined (workflows/)")]
    NoWorkflow(&'static str),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<StoreError> for LifecycleError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Domain(rule) => LifecycleError::Domain(rule),
            other => LifecycleError::Store(other),
        }
    }
}

/// What a request led to.
#[derive(Debug, Clone, PartialEq)]
pub struct Requested {
    pub module: TenantModuleRecord,
    /// The provisioning run, when the request was admitted without approval.
    pub run: Option<RunId>,
    /// Shown to the tenant (BETA, MAINTENANCE).
    pub warning: Option<String>,
}

/// The workflow that provisions a tenant module.
pub const PROVISION_WORKFLOW: &str = "module_provision";

/// The workflow that upgrades a module for all its tenants.
pub const UPGRADE_WORKFLOW: &str = "module_upgrade";

/// The workflow that archives a tenant module (export, then remove).
pub const ARCHIVE_WORKFLOW: &str = "module_archive";

/// The workflow that notifies tenants of a deprecation or retirement and applies it.
pub const DEPRECATION_WORKFLOW: &str = "module_deprecation";

/// The lifecycle operations, over the workflow engine (and its store).
#[derive(Clone)]
pub struct Lifecycle {
    store: SharedStore,
    engine: Arc<Engine>,
}

impl Lifecycle {
    /// Lifecycle operations on `engine`, which must run the `module_provision` workflow.
    pub fn new(engine: Arc<Engine>) -> Result<Self, LifecycleError> {
        for workflow in [PROVISION_WORKFLOW, UPGRADE_WORKFLOW, ARCHIVE_WORKFLOW] {
            if engine.workflows().get(workflow).is_none() {
                return Err(LifecycleError::NoWorkflow(workflow));
            }
        }
        Ok(Self {
            store: Arc::clone(engine.store()),
            engine,
        })
    }

    /// Start provisioning a tenant module that is PROVISIONING; returns the run. One run per
    /// request: the idempotency key names the tenant, the module and the request's time, so
    /// starting again (the reconciler does, after a crash) returns the same run.
    pub async fn start_provisioning(
        &self,
        module: &TenantModuleRecord,
    ) -> Result<RunId, LifecycleError> {
        let key = format!(
            "{PROVISION_WORKFLOW}:{}:{}:{}",
            module.tenant_id,
            module.module,
            module.requested_at.timestamp_millis()
        );
        let (run, _) = self
            .engine
            .start(
                PROVISION_WORKFLOW,
                json!({"tenant_id": module.tenant_id, "module": module.module}),
                Some(key),
            )
            .await?;
        Ok(run)
    }

    /// Repair provisioning left behind: a tenant module PROVISIONING for longer than `idle`
    /// gets its run (started again, idempotently: a crash between the move and the start
    /// left it without one), and one whose run failed or was cancelled moves to ERROR with
    /// the run's reason. Returns how many were repaired.
    pub async fn reconcile(&self, idle: std::time::Duration) -> Result<u64, LifecycleError> {
        let mut repaired = 0;
        let stuck = self
            .store
            .tenant_modules_stuck(TenantModuleStatus::Provisioning, idle, 1000)
            .await?;
        for module in stuck {
            let run = self.start_provisioning(&module).await?;
            let run = self.engine.run(run).await?;
            if !matches!(run.state, RunState::Failed | RunState::Cancelled) {
                continue;
            }
            let reason = format!(
                "provisioning run {} {}: {}",
                run.id,
                run.state,
                run.error.as_deref().unwrap_or("no reason recorded")
            );
            self.store
                .tenant_module_move(&StatusChange {
                    tenant_id: module.tenant_id,
                    module: &module.module,
                    to: TenantModuleStatus::Error,
                    from: Some(TenantModuleStatus::Provisioning),
                    reason: Some(&reason),
                    actor: "steward:reconciler",
                    action: "module.provision_failed",
                    provisioning: None,
                    set_version: None,
                    unchanged_since: None,
                })
                .await?;
            repaired += 1;
        }
        Ok(repaired)
    }

    /// Publish a catalog (from `catalog/*.toml`): every module created or updated (a
    /// module's maturity is taken from the file only when the module is new), every version
    /// published (an already published version is left as it is). Returns how many modules
    /// and versions the catalog holds.
    pub async fn load_catalog(
        &self,
        catalog: &Catalog,
        actor: &str,
    ) -> Result<(usize, usize), LifecycleError> {
        let mut versions = 0;
        for def in catalog.iter() {
            let record = ModuleRecord {
                slug: def.slug.to_string(),
                name: def.name.clone(),
                description: def.description.clone(),
                pricing_tier: def.pricing_tier.clone(),
                maturity: def.maturity,
                dependencies: def.dependencies.iter().map(|d| d.to_string()).collect(),
                data_retention_days: def
                    .data_retention_days
                    .map(|d| i32::try_from(d).unwrap_or(i32::MAX)),
                successor: def.successor.as_ref().map(|s| s.to_string()),
                sunset_date: def.sunset_date.clone(),
            };
            self.store.module_put(&record, actor).await?;
            for v in &def.versions {
                let number = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
                self.store
                    .version_publish(
                        &record.slug,
                        &NewVersion {
                            version: v.version.clone(),
                            major: number(v.major),
                            minor: number(v.minor),
                            patch: number(v.patch),
                            build_hash: v.build_hash.clone(),
                            changelog: v.changelog.clone(),
                            up_sql: v.up_sql.clone(),
                            down_sql: v.down_sql.clone(),
                            pre_upgrade_sql: v.pre_upgrade_sql.clone(),
                            post_upgrade_sql: v.post_upgrade_sql.clone(),
                            settings_schema: v.settings_schema.clone(),
                            tables_created: v.tables.iter().map(|t| t.to_string()).collect(),
                        },
                    )
                    .await?;
                versions += 1;
            }
        }
        Ok((catalog.len(), versions))
    }

    /// A tenant asks for a module (at the version installed here, else the latest). Refused, with the rule that refused
    /// it, when the module is not available to this tenant or its dependencies are not
    /// enabled; otherwise recorded as REQUESTED and moved on to PENDING_APPROVAL (ALPHA) or
    /// PROVISIONING.
    pub async fn request(
        &self,
        tenant_id: TenantId,
        slug: &str,
        actor: &str,
    ) -> Result<Requested, LifecycleError> {
        let slug = Slug::parse(slug)?;
        let tenant = self
            .store
            .tenant_get(tenant_id)
            .await?
            .ok_or(LifecycleError::NoTenant(tenant_id))?;
        let module = self
            .store
            .module_get(slug.as_str())
            .await?
            .ok_or_else(|| LifecycleError::NoModule(slug.to_string()))?;
        // New tenants get the version the module's tables are at in this database (upgrades
        // move everyone together), or the latest one on a first install.
        let versions = self.store.versions_of(slug.as_str()).await?;
        let version = versions
            .iter()
            .rev()
            .find(|v| v.migrated_at.is_some())
            .or(versions.last())
            .ok_or_else(|| LifecycleError::NoVersion(slug.to_string()))?;
        let modules: HashMap<String, TenantModuleStatus> = self
            .store
            .tenant_modules(tenant_id)
            .await?
            .into_iter()
            .map(|m| (m.module, m.status))
            .collect();
        let admission = availability::admit(
            &ModuleFacts {
                slug: slug.as_str(),
                maturity: module.maturity,
                dependencies: &module.dependencies,
            },
            &TenantFacts {
                internal_tester: tenant.internal_tester,
                beta_opt_in: tenant.beta_opt_in,
                modules: &modules,
            },
        )?;
        self.store
            .tenant_module_request(
                tenant_id,
                slug.as_str(),
                version.id,
                TenantModuleStatus::Requested,
                actor,
            )
            .await?;
        let (to, reason, warning) = match admission {
            Admission::NeedsApproval { reason } => {
                (TenantModuleStatus::PendingApproval, Some(reason), None)
            }
            Admission::Provision { warning } => (TenantModuleStatus::Provisioning, None, warning),
        };
        let module = self
            .store
            .tenant_module_move(&StatusChange {
                tenant_id,
                module: slug.as_str(),
                to,
                from: Some(TenantModuleStatus::Requested),
                reason: reason.as_deref(),
                actor,
                action: "module.admit",
                provisioning: None,
                set_version: None,
                unchanged_since: None,
            })
            .await?;
        let run = match module.status {
            TenantModuleStatus::Provisioning => Some(self.start_provisioning(&module).await?),
            _ => None,
        };
        Ok(Requested {
            module,
            run,
            warning,
        })
    }

    /// Upgrade a module to `version` for every tenant using it: starts the `module_upgrade`
    /// run (backups of a major upgrade go under `export_dir`).
    pub async fn upgrade(
        &self,
        slug: &str,
        version: &str,
        export_dir: &std::path::Path,
    ) -> Result<RunId, LifecycleError> {
        let slug = Slug::parse(slug)?;
        if !self
            .store
            .versions_of(slug.as_str())
            .await?
            .iter()
            .any(|v| v.version == version)
        {
            return Err(LifecycleError::NoVersion(format!("{slug} {version}")));
        }
        let (run, _) = self
            .engine
            .start(
                UPGRADE_WORKFLOW,
                json!({"module": slug.as_str(), "version": version,
                       "export_dir": export_dir.display().to_string()}),
                None,
            )
            .await?;
        Ok(run)
    }

    /// Move a catalog module's maturity. To DEPRECATED or RETIRED, this starts the
    /// `module_deprecation` run that notifies every impacted tenant by webhook and then
    /// applies the retirement (`force`: retired by policy, tenants still using it are
    /// SUSPENDED). Asking again for the maturity the module already has starts the run if a
    /// crash kept it from starting, and otherwise returns the same run. Returns the previous
    /// maturity and the run.
    pub async fn set_maturity(
        &self,
        slug: &str,
        to: Maturity,
        force: bool,
        actor: &str,
    ) -> Result<(Maturity, Option<RunId>), LifecycleError> {
        let slug = Slug::parse(slug)?;
        let current = self
            .store
            .module_get(slug.as_str())
            .await?
            .ok_or_else(|| LifecycleError::NoModule(slug.to_string()))?;
        let notifies = matches!(to, Maturity::Deprecated | Maturity::Retired);
        let from = if current.maturity == to && notifies {
            current.maturity
        } else {
            self.store
                .module_set_maturity(slug.as_str(), to, actor)
                .await?
        };
        if !notifies {
            return Ok((from, None));
        }
        let (run, _) = self
            .engine
            .start(
                DEPRECATION_WORKFLOW,
                json!({"module": slug.as_str(), "maturity": to.to_string(), "force": force}),
                Some(format!("{DEPRECATION_WORKFLOW}:{slug}:{to}")),
            )
            .await?;
        Ok((from, Some(run)))
    }

    /// A tenant turns a module off: DISABLED, its data kept and frozen.
    pub async fn disable(
        &self,
        tenant_id: TenantId,
        slug: &str,
        actor: &str,
    ) -> Result<TenantModuleRecord, LifecycleError> {
        self.set_status(
            tenant_id,
            slug,
            actor,
            TenantModuleStatus::Disabled,
            "module.disable",
        )
        .await
    }

    /// A tenant turns a DISABLED (or an operator a SUSPENDED) module back on.
    pub async fn reenable(
        &self,
        tenant_id: TenantId,
        slug: &str,
        actor: &str,
    ) -> Result<TenantModuleRecord, LifecycleError> {
        self.set_status(
            tenant_id,
            slug,
            actor,
            TenantModuleStatus::Enabled,
            "module.reenable",
        )
        .await
    }

    async fn set_status(
        &self,
        tenant_id: TenantId,
        slug: &str,
        actor: &str,
        to: TenantModuleStatus,
        action: &str,
    ) -> Result<TenantModuleRecord, LifecycleError> {
        let slug = Slug::parse(slug)?;
        Ok(self
            .store
            .tenant_module_move(&StatusChange {
                tenant_id,
                module: slug.as_str(),
                to,
                from: None,
                reason: None,
                actor,
                action,
                provisioning: None,
                set_version: None,
                unchanged_since: None,
            })
            .await?)
    }

    /// Archive a DISABLED or SUSPENDED tenant module: starts the `module_archive` run, which
    /// exports the tenant's rows to the export storage, verifies them, and only then removes
    /// them.
    pub async fn archive(&self, tenant_id: TenantId, slug: &str) -> Result<RunId, LifecycleError> {
        let slug = Slug::parse(slug)?;
        let current = self
            .store
            .tenant_module_get(tenant_id, slug.as_str())
            .await?
            .ok_or_else(|| LifecycleError::NoModule(slug.to_string()))?;
        current.status.check_move(TenantModuleStatus::Archived)?;
        let (run, _) = self
            .engine
            .start(
                ARCHIVE_WORKFLOW,
                json!({"tenant_id": tenant_id, "module": slug.as_str()}),
                None,
            )
            .await?;
        Ok(run)
    }

    /// Add a module to a plan and sync it to the plan's active subscribers (their
    /// provisioning runs are started by the reconciler of `steward worker`).
    pub async fn plan_add_module(
        &self,
        plan: &str,
        slug: &str,
        actor: &str,
    ) -> Result<Vec<PlanSynced>, LifecycleError> {
        let slug = Slug::parse(slug)?;
        self.store
            .plan_add_module(plan, slug.as_str(), actor)
            .await?;
        self.sync_plans(Some(plan), Some(slug.as_str()), actor)
            .await
    }

    /// Sync plan modules to tenants with an active subscription (one plan or all, one module
    /// or all): set-based, never removes, idempotent. The new tenant modules are
    /// PROVISIONING; the reconciler of `steward worker` starts their runs.
    pub async fn sync_plans(
        &self,
        plan: Option<&str>,
        slug: Option<&str>,
        actor: &str,
    ) -> Result<Vec<PlanSynced>, LifecycleError> {
        let slug = slug.map(Slug::parse).transpose()?;
        Ok(self
            .store
            .plan_sync(plan, slug.as_ref().map(Slug::as_str), actor)
            .await?)
    }

    /// Roll a module's last upgrade back by hand, within `window` of it (refused after).
    pub async fn rollback(
        &self,
        slug: &str,
        window: std::time::Duration,
        actor: &str,
    ) -> Result<Vec<TenantId>, LifecycleError> {
        let slug = Slug::parse(slug)?;
        Ok(self
            .store
            .module_rollback(slug.as_str(), window, actor)
            .await?)
    }

    /// A Master Admin approves a pending request: it moves on to PROVISIONING and its
    /// provisioning run starts (returned).
    pub async fn approve(
        &self,
        tenant_id: TenantId,
        slug: &str,
        actor: &str,
    ) -> Result<(TenantModuleRecord, RunId), LifecycleError> {
        let module = self
            .decide(
                tenant_id,
                slug,
                actor,
                TenantModuleStatus::Provisioning,
                None,
                "module.approve",
            )
            .await?;
        let run = self.start_provisioning(&module).await?;
        Ok((module, run))
    }

    /// A Master Admin rejects a pending request: the module stays off (DISABLED), nothing
    /// was created.
    pub async fn reject(
        &self,
        tenant_id: TenantId,
        slug: &str,
        actor: &str,
        reason: &str,
    ) -> Result<TenantModuleRecord, LifecycleError> {
        self.decide(
            tenant_id,
            slug,
            actor,
            TenantModuleStatus::Disabled,
            Some(reason),
            "module.reject",
        )
        .await
    }

    async fn decide(
        &self,
        tenant_id: TenantId,
        slug: &str,
        actor: &str,
        to: TenantModuleStatus,
        reason: Option<&str>,
        action: &str,
    ) -> Result<TenantModuleRecord, LifecycleError> {
        let slug = Slug::parse(slug)?;
        // Only a pending request is decided (PROVISIONING → DISABLED is a legal move in
        // general, but not an approval decision): `from` makes the store check it under lock.
        Ok(self
            .store
            .tenant_module_move(&StatusChange {
                tenant_id,
                module: slug.as_str(),
                to,
                from: Some(TenantModuleStatus::PendingApproval),
                reason,
                actor,
                action,
                provisioning: None,
                set_version: None,
                unchanged_since: None,
            })
            .await?)
    }
}
