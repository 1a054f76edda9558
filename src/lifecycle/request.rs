//! A tenant asks for a module; a Master Admin approves or rejects it; the reconciler
//! repairs requests a crash left behind.
//!
//! A request and its admission (PENDING_APPROVAL or PROVISIONING) are one write: the
//! availability rules decide first, then the record is written in the status they chose, so
//! no crash leaves a module REQUESTED. PROVISIONING starts the `module_provision` run.

use super::{APPROVAL_SIGNAL, Lifecycle, LifecycleError, PROVISION_WORKFLOW, installed};
use crate::domain::DomainError;
use crate::domain::actor::Actor;
use crate::domain::availability::{self, Admission, ModuleFacts, TenantFacts};
use crate::domain::ident::Slug;
use crate::domain::status::{self, TenantModuleStatus};
use crate::store::StoreError;
use crate::store::domain::{ModuleRequest, Seen, StatusChange, TenantId, TenantModuleRecord};
use crate::store::runs::{RunId, RunState};
use serde_json::json;

/// What a request led to.
#[derive(Debug, Clone, PartialEq)]
pub struct Requested {
    pub module: TenantModuleRecord,
    /// The provisioning run, when the request was admitted without approval.
    pub run: Option<RunId>,
    /// Shown to the tenant (BETA, MAINTENANCE).
    pub warning: Option<String>,
}

impl Lifecycle {
    /// A tenant asks for a module (at the version installed here, else the latest). Refused,
    /// with the rule that refused it, when the module is not available to this tenant, its
    /// dependencies are not enabled, or the tenant has it already (a rejected, failed or
    /// archived module is requested again). Otherwise recorded as PENDING_APPROVAL (ALPHA)
    /// or PROVISIONING in one write, and provisioning starts: a pending request's run waits
    /// (holding no worker) for the Master Admin's approval.
    pub async fn request(
        &self,
        tenant_id: TenantId,
        slug: &str,
        actor: &Actor,
    ) -> Result<Requested, LifecycleError> {
        let slug = Slug::parse(slug)?;
        let existing = self
            .store
            .tenant_module_get(tenant_id, slug.as_str())
            .await?;
        status::check_request_again(
            existing.as_ref().map(|m| m.status),
            existing.as_ref().and_then(|m| m.disabled_from),
        )?;
        let (admission, version_id, seen) = self.admission(tenant_id, &slug).await?;
        let (to, reason, warning) = match admission {
            Admission::NeedsApproval { reason } => {
                (TenantModuleStatus::PendingApproval, Some(reason), None)
            }
            Admission::Provision { warning } => (TenantModuleStatus::Provisioning, None, warning),
        };
        let module = self
            .store
            .tenant_module_request(&ModuleRequest {
                tenant_id,
                module: slug.as_str(),
                version_id,
                status: to,
                reason: reason.as_deref(),
                expected: existing.map(|m| m.status),
                actor: actor.as_str(),
                // The dependencies admission found enabled are still so when it is written.
                tenant_seen: Some(&seen),
            })
            .await?;
        let run = match module.status {
            TenantModuleStatus::Provisioning | TenantModuleStatus::PendingApproval => {
                Some(self.start_provisioning(&module).await?)
            }
            _ => None,
        };
        Ok(Requested {
            module,
            run,
            warning,
        })
    }

    /// The availability rules' answer for `tenant_id` and `slug`, the version it gets, and
    /// the tenant's modules the answer read.
    async fn admission(
        &self,
        tenant_id: TenantId,
        slug: &Slug,
    ) -> Result<(Admission, i64, Vec<Seen>), LifecycleError> {
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
        let version = installed(&versions)
            .or(versions.last())
            .ok_or_else(|| LifecycleError::NoVersion(slug.to_string()))?;
        let tenant_modules = self.store.tenant_modules(tenant_id).await?;
        let modules = super::switch::statuses(&tenant_modules);
        let seen = super::switch::seen(&tenant_modules, &module.dependencies);
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
        Ok((admission, version.id, seen))
    }

    /// Start provisioning a tenant module that is PROVISIONING, or PENDING_APPROVAL (its run
    /// then waits for the approval); returns the run. One run per request: the idempotency key
    /// names the tenant, the module and the request's time, so starting again (the reconciler
    /// does, after a crash; approval does) returns the same run.
    pub async fn start_provisioning(
        &self,
        module: &TenantModuleRecord,
    ) -> Result<RunId, LifecycleError> {
        let key = provisioning_key(module);
        let (run, _) = self
            .engine
            .start(
                PROVISION_WORKFLOW,
                json!({"tenant_id": module.tenant_id, "module": module.module,
                       "approval": module.status == TenantModuleStatus::PendingApproval}),
                Some(key),
            )
            .await?;
        Ok(run)
    }

    /// A Master Admin approves a pending request: it moves on to PROVISIONING and its
    /// provisioning run, waiting since the request, gets the `approval` signal (which nothing
    /// else may send) and goes on (returned).
    pub async fn approve(
        &self,
        tenant_id: TenantId,
        slug: &str,
        actor: &Actor,
    ) -> Result<(TenantModuleRecord, RunId), LifecycleError> {
        check_decider(actor, slug)?;
        // The run waiting for this decision has ended (an operator cancelled it, and a crash
        // kept the request from being withdrawn with it): the request is withdrawn now, and
        // made again, rather than "approved" into a run that will never provision it.
        let pending = self.tenant_module(tenant_id, &Slug::parse(slug)?).await?;
        if pending.status == TenantModuleStatus::PendingApproval {
            let waiting = self
                .engine
                .run(self.start_provisioning(&pending).await?)
                .await?;
            if matches!(
                waiting.state,
                RunState::Cancelled | RunState::Failed | RunState::Completed
            ) {
                let reason = format!("its provisioning run {} is {}", waiting.id, waiting.state);
                let read = Some(pending.updated_at);
                pending_request_withdrawn(&self.store, tenant_id, slug, &reason, actor, read)
                    .await?;
                return Err(DomainError::RequestAgain {
                    module: slug.to_string(),
                    reason,
                }
                .into());
            }
        }
        let module = self
            .decide(
                tenant_id,
                slug,
                actor,
                TenantModuleStatus::Provisioning,
                None,
            )
            .await?;
        let run = self.start_provisioning(&module).await?;
        let decision = json!({"approved": true});
        match self
            .engine
            .signal(run, APPROVAL_SIGNAL, &decision, actor.as_str(), None)
            .await
        {
            // (A request pending before runs waited for approval has a run that does not.)
            Ok(()) | Err(crate::workflow::EngineError::Signal(_)) => {}
            Err(err) => return Err(err.into()),
        }
        Ok((module, run))
    }

    /// The waiting provisioning run of a request that was rejected or withdrawn (`pending`:
    /// the record as it was while pending) is cancelled by `actor`: nothing was provisioned.
    pub(super) async fn end_pending_run(
        &self,
        pending: &TenantModuleRecord,
        actor: &Actor,
    ) -> Result<(), LifecycleError> {
        let run = self.start_provisioning(pending).await?;
        match self.engine.cancel(run, actor.as_str()).await {
            Ok(()) | Err(crate::workflow::EngineError::NotCancellable { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// A Master Admin rejects a pending request: the module stays off (DISABLED, rejected:
    /// it is requested again, never re-enabled), nothing was created, and the run that waited
    /// for the decision is cancelled.
    pub async fn reject(
        &self,
        tenant_id: TenantId,
        slug: &str,
        actor: &Actor,
        reason: &str,
    ) -> Result<TenantModuleRecord, LifecycleError> {
        let rejected = self
            .decide(
                tenant_id,
                slug,
                actor,
                TenantModuleStatus::Disabled,
                Some(reason),
            )
            .await?;
        let pending = TenantModuleRecord {
            status: TenantModuleStatus::PendingApproval,
            ..rejected.clone()
        };
        self.end_pending_run(&pending, actor).await?;
        Ok(rejected)
    }

    async fn decide(
        &self,
        tenant_id: TenantId,
        slug: &str,
        actor: &Actor,
        to: TenantModuleStatus,
        reason: Option<&str>,
    ) -> Result<TenantModuleRecord, LifecycleError> {
        let slug = Slug::parse(slug)?;
        let action = if to == TenantModuleStatus::Disabled {
            "module.reject"
        } else {
            "module.approve"
        };
        check_decider(actor, slug.as_str())?;
        // An approval turns the module on: its dependencies must still be enabled (a Master
        // Admin may have suspended one since the request), and still be when it is written.
        let mut seen = None;
        if to == TenantModuleStatus::Provisioning {
            let module = self
                .store
                .module_get(slug.as_str())
                .await?
                .ok_or_else(|| LifecycleError::NoModule(slug.to_string()))?;
            let modules = self.store.tenant_modules(tenant_id).await?;
            let statuses = super::switch::statuses(&modules);
            status::check_dependencies(slug.as_str(), &module.dependencies, &statuses)?;
            seen = Some(super::switch::seen(&modules, &module.dependencies));
        }
        // Only a pending request is decided (PROVISIONING → DISABLED is a legal move in
        // general, but not an approval decision): `from` is checked under the row lock.
        let mut change = StatusChange::new(
            tenant_id,
            slug.as_str(),
            Some(TenantModuleStatus::PendingApproval),
            to,
            actor.as_str(),
            action,
        );
        change.reason = reason;
        change.tenant_seen = seen.as_deref();
        Ok(self.store.tenant_module_move(&change).await?)
    }

    /// Repair requests left behind: a tenant module PROVISIONING for longer than `idle` gets
    /// its run (started again, idempotently: a crash between the write and the start left
    /// it without one), and one whose run failed or was cancelled moves to ERROR with the
    /// run's reason; one left REQUESTED (by a version of steward that wrote a request and its
    /// admission apart) is admitted now, or moved to ERROR with the rule that refuses it.
    /// Returns how many were repaired.
    pub async fn reconcile(&self, idle: std::time::Duration) -> Result<u64, LifecycleError> {
        let system = Actor::system("steward:reconciler");
        let mut repaired = 0;
        for module in self
            .store
            .tenant_modules_stuck(TenantModuleStatus::Requested, idle, 1000)
            .await?
        {
            let slug = Slug::parse(&module.module)?;
            let (to, reason, seen) = match self.admission(module.tenant_id, &slug).await {
                Ok((Admission::NeedsApproval { reason }, _, seen)) => (
                    TenantModuleStatus::PendingApproval,
                    Some(reason),
                    Some(seen),
                ),
                Ok((Admission::Provision { .. }, _, seen)) => {
                    (TenantModuleStatus::Provisioning, None, Some(seen))
                }
                // Refused now (a rule, or the tenant, module or version is gone): ERROR with
                // the reason, so one stranded row never blocks the others.
                Err(
                    refused @ (LifecycleError::Domain(_)
                    | LifecycleError::NoTenant(_)
                    | LifecycleError::NoModule(_)
                    | LifecycleError::NoVersion(_)),
                ) => (TenantModuleStatus::Error, Some(refused.to_string()), None),
                Err(other) => return Err(other),
            };
            let mut change = StatusChange::new(
                module.tenant_id,
                slug.as_str(),
                Some(TenantModuleStatus::Requested),
                to,
                system.as_str(),
                "module.admit",
            );
            change.reason = reason.as_deref();
            change.tenant_seen = seen.as_deref();
            let moved = match self.store.tenant_module_move(&change).await {
                Ok(moved) => moved,
                // Its dependencies changed as it was admitted (or it moved meanwhile): the
                // next round decides again; the others are not held up.
                Err(StoreError::Conflict(_)) => continue,
                Err(err) => return Err(err.into()),
            };
            if moved.status == TenantModuleStatus::Provisioning {
                self.start_provisioning(&moved).await?;
            }
            repaired += 1;
        }
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
            // Only the request this run served: one made again since (after a repair) is
            // left to its own run.
            provisioning_ended(
                &self.store,
                module.tenant_id,
                &module.module,
                &reason,
                &system,
                Some(module.updated_at),
            )
            .await?;
            repaired += 1;
        }
        Ok(repaired)
    }
}

/// Only a Master Admin approves or rejects a request.
fn check_decider(actor: &Actor, slug: &str) -> Result<(), LifecycleError> {
    if actor.authority != crate::domain::actor::Authority::MasterAdmin {
        return Err(DomainError::NotPermitted {
            what: format!("deciding a request for `{slug}`"),
            reason: "only a Master Admin approves or rejects".into(),
        }
        .into());
    }
    Ok(())
}

/// The idempotency key of the provisioning run of `module`'s request: the tenant, the module
/// and the request's time, so each request has one run, and a run knows whether the request
/// it serves is still the tenant module's current one.
pub(crate) fn provisioning_key(module: &TenantModuleRecord) -> String {
    format!(
        "{PROVISION_WORKFLOW}:{}:{}:{}",
        module.tenant_id,
        module.module,
        module.requested_at.timestamp_millis()
    )
}

/// A provisioning run that waited for approval was cancelled: the request is withdrawn with
/// it (DISABLED before approval, so it is requested again, never approved into a cancelled
/// run). Nothing to do when the module is no longer pending (rejected or approved meanwhile).
pub(crate) async fn pending_request_withdrawn(
    store: &crate::store::SharedStore,
    tenant_id: TenantId,
    module: &str,
    reason: &str,
    actor: &Actor,
    unchanged_since: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<(), LifecycleError> {
    let mut change = StatusChange::new(
        tenant_id,
        module,
        Some(TenantModuleStatus::PendingApproval),
        TenantModuleStatus::Disabled,
        actor.as_str(),
        "module.withdraw",
    )
    .because(reason);
    change.unchanged_since = unchanged_since;
    move_unless_moved(store, &change).await
}

/// A provisioning that will not finish (its run failed or was cancelled): the tenant module
/// moves from PROVISIONING to ERROR with `reason` (it is requested again). A module that
/// already left PROVISIONING, or changed since `unchanged_since` (the record the decision
/// read), is left as it is.
pub(crate) async fn provisioning_ended(
    store: &crate::store::SharedStore,
    tenant_id: TenantId,
    module: &str,
    reason: &str,
    actor: &Actor,
    unchanged_since: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<(), LifecycleError> {
    let mut change = StatusChange::new(
        tenant_id,
        module,
        Some(TenantModuleStatus::Provisioning),
        TenantModuleStatus::Error,
        actor.as_str(),
        "module.provision_failed",
    )
    .because(reason);
    change.unchanged_since = unchanged_since;
    move_unless_moved(store, &change).await
}

/// Make `change`, unless the tenant module already moved elsewhere (nothing to do then).
async fn move_unless_moved(
    store: &crate::store::SharedStore,
    change: &StatusChange<'_>,
) -> Result<(), LifecycleError> {
    match store.tenant_module_move(change).await {
        Ok(_) => Ok(()),
        Err(crate::store::StoreError::Domain(DomainError::InvalidTransition { .. })) => Ok(()),
        Err(other) => Err(other.into()),
    }
}
