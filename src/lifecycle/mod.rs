//! The lifecycle **operations**: the one place where a rule of the module lifecycle is
//! decided. Every entry point (the CLI, the HTTP API, the dashboard, plan sync, the
//! reconciler, run retry and cancel, the dead-letter queue) calls an operation here; the
//! operation asks [`crate::domain`] (pure rules: statuses, who may, dependencies,
//! availability, settings) and then calls the stores only for primitives (read, write
//! if unchanged, audited), never the other way round.
//!
//! - [`request`]: request, approve, reject, the reconciler's repair of stranded requests;
//! - [`switch`]: disable, re-enable, suspend, resume, repair, archive, a tenant's change of
//!   state and settings;
//! - [`catalog`]: publish the catalog, maturity, plans and plan sync, the catalog a tenant
//!   sees, upgrade and rollback;
//! - [`restore`]: put a major upgrade's backup back into the module's tables;
//! - [`operator`]: run retry and cancel, and the dead-letter queue's retry (a dead workflow
//!   step is retried through its run);
//! - [`steps`], [`purge`], [`cost`], [`deprecation`]: the step handlers of the lifecycle
//!   workflows.

pub mod catalog;
pub mod cost;
pub mod deprecation;
pub mod operator;
pub mod purge;
mod reconciler;
pub mod request;
pub mod restore;
pub mod steps;
pub mod storage_circuit;
pub mod subscriptions;
pub mod switch;
pub mod webhook;

pub use reconciler::ProvisioningReconciler;
pub use request::Requested;

use crate::domain::DomainError;
use crate::domain::ident::Slug;
use crate::store::domain::{TenantId, TenantModuleRecord, VersionRecord};
use crate::store::{SharedStore, StoreError};
use crate::workflow::{Engine, EngineError};
use std::sync::Arc;

/// Every step handler this binary has: the workflow engine's built-ins and the lifecycle's
/// (those that export data write to `exports`). The lifecycle sits above the engine, so it
/// is the one that puts both together.
pub fn step_registry(exports: crate::export::SharedExports) -> crate::workflow::StepRegistry {
    let mut steps = crate::workflow::steps::registry();
    register_steps(&mut steps, exports);
    steps
}

/// Register every lifecycle step handler; those that export data write to `exports`.
pub fn register_steps(
    steps: &mut crate::workflow::StepRegistry,
    exports: crate::export::SharedExports,
) {
    steps::register(steps, exports.clone());
    purge::register(steps, exports);
    cost::register(steps);
    deprecation::register(steps);
}

/// Why a lifecycle operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("no tenant {0}")]
    NoTenant(TenantId),
    #[error("no module `{0}` in the catalog")]
    NoModule(String),
    #[error("tenant {0} has no module `{1}`")]
    NoTenantModule(TenantId, String),
    #[error("module `{0}` has no such published version")]
    NoVersion(String),
    #[error("no job {0}")]
    NoJob(crate::types::JobId),
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Store(StoreError),
    #[error("the workflow `{0}` is not defined (workflows/)")]
    NoWorkflow(&'static str),
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The export storage (a backup read back) could not be reached.
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    /// The action applied to nothing (an operator must not read success into it).
    #[error("{0}")]
    NothingDone(String),
}

impl From<StoreError> for LifecycleError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Domain(rule) => LifecycleError::Domain(rule),
            other => LifecycleError::Store(other),
        }
    }
}

/// The workflow that provisions a tenant module.
pub const PROVISION_WORKFLOW: &str = "module_provision";

/// The workflow that upgrades a module for all its tenants.
pub const UPGRADE_WORKFLOW: &str = "module_upgrade";

/// The workflow that archives a tenant module (export, then remove).
pub const ARCHIVE_WORKFLOW: &str = "module_archive";

/// The workflow that notifies tenants of a deprecation or retirement and applies it.
pub const DEPRECATION_WORKFLOW: &str = "module_deprecation";
/// The signal a pending request's provisioning run waits for; only [`Lifecycle::approve`]
/// sends it (its `[signals]` entry names no role).
pub const APPROVAL_SIGNAL: &str = "approval";

/// The lifecycle operations, over the workflow engine (and its store).
#[derive(Clone)]
pub struct Lifecycle {
    store: SharedStore,
    engine: Arc<Engine>,
}

impl Lifecycle {
    /// Lifecycle operations on `engine`, which must run the lifecycle workflows.
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

    /// The engine the operations start runs on.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// A tenant's module, or `NoTenantModule`.
    async fn tenant_module(
        &self,
        tenant_id: TenantId,
        slug: &Slug,
    ) -> Result<TenantModuleRecord, LifecycleError> {
        self.store
            .tenant_module_get(tenant_id, slug.as_str())
            .await?
            .ok_or_else(|| LifecycleError::NoTenantModule(tenant_id, slug.to_string()))
    }
}

/// A module's versions (oldest first) and the one its shared tables are at in this
/// database (the latest migrated one), if any.
pub(crate) fn installed(versions: &[VersionRecord]) -> Option<&VersionRecord> {
    versions.iter().rev().find(|v| v.migrated_at.is_some())
}
