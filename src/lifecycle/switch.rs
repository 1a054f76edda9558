//! Turning a tenant's module off and on, suspending and resuming it, archiving it, its
//! settings, and the repair of an inconsistent record. Who may do which, from which status,
//! with which dependencies, is decided here through [`crate::domain::status`]; the store
//! writes the move only if the module is still in the status the operation saw (checked
//! under a row lock), audited in the same transaction.

use super::{ARCHIVE_WORKFLOW, Lifecycle, LifecycleError, UPGRADE_WORKFLOW, installed};
use crate::domain::DomainError;
use crate::domain::actor::{Actor, Authority};
use crate::domain::ident::Slug;
use crate::domain::maturity::Maturity;
use crate::domain::settings;
use crate::domain::status::{self, TenantModuleStatus};
use crate::store::domain::{Seen, StatusChange, TenantId, TenantModuleRecord};
use crate::store::runs::{RunId, RunState};
use crate::store::{SharedStore, StoreError};
use serde_json::{Value, json};
use std::collections::HashMap;

/// A change of a tenant module asked for at once (the API's PATCH): a state, settings, or
/// both. Everything is checked before anything is written.
#[derive(Debug, Clone, Default)]
pub struct ModuleChange {
    /// ENABLED, DISABLED or ARCHIVED.
    pub state: Option<TenantModuleStatus>,
    pub settings: Option<Value>,
}

/// What a [`ModuleChange`] did.
#[derive(Debug, Clone, Default)]
pub struct ModuleChanged {
    pub module: Option<TenantModuleRecord>,
    /// The archive run, for ARCHIVED.
    pub run: Option<RunId>,
    pub previous_settings: Option<Value>,
}

impl Lifecycle {
    /// Turn a tenant's module off: DISABLED, its data kept and frozen. Refused while another
    /// module of the tenant that depends on it is in use or on its way in (the error lists
    /// them); written only if the tenant's modules are still as read here.
    pub async fn disable(
        &self,
        tenant_id: TenantId,
        slug: &str,
        actor: &Actor,
    ) -> Result<TenantModuleRecord, LifecycleError> {
        let slug = Slug::parse(slug)?;
        let current = self.tenant_module(tenant_id, &slug).await?;
        let (dependants, seen) = dependants(&self.store, tenant_id, &slug).await?;
        status::check_disable(slug.as_str(), current.status, &dependants)?;
        let mut change = StatusChange::new(
            tenant_id,
            slug.as_str(),
            Some(current.status),
            TenantModuleStatus::Disabled,
            actor.as_str(),
            "module.disable",
        );
        change.tenant_seen = Some(&seen);
        let disabled = self.store.tenant_module_move(&change).await?;
        // A pending request withdrawn: its run stops waiting for an approval.
        if current.status == TenantModuleStatus::PendingApproval {
            self.end_pending_run(&current, actor).await?;
        }
        Ok(disabled)
    }

    /// Turn a module back on: one its tenant turned off while in use (anyone who manages
    /// the tenant), or a SUSPENDED one (a Master Admin only). A rejected, failed or never
    /// enabled module is requested again instead; a RETIRED one stays off; every module it
    /// depends on must be enabled. A module that missed an upgrade while it was off catches
    /// up first (the upgrade's post-upgrade SQL for this tenant, in the same transaction)
    /// and lands UP_TO_DATE at the version its tables are at.
    pub async fn reenable(
        &self,
        tenant_id: TenantId,
        slug: &str,
        actor: &Actor,
    ) -> Result<TenantModuleRecord, LifecycleError> {
        let slug = Slug::parse(slug)?;
        let current = self.tenant_module(tenant_id, &slug).await?;
        let module = self
            .store
            .module_get(slug.as_str())
            .await?
            .ok_or_else(|| LifecycleError::NoModule(slug.to_string()))?;
        status::check_reenable(
            slug.as_str(),
            current.status,
            current.disabled_from,
            module.maturity == Maturity::Retired,
            actor,
        )?;
        let modules = self.store.tenant_modules(tenant_id).await?;
        status::check_dependencies(slug.as_str(), &module.dependencies, &statuses(&modules))?;
        let seen = seen(&modules, &module.dependencies);
        let action = if current.status == TenantModuleStatus::Suspended {
            "module.resume"
        } else {
            "module.reenable"
        };
        let (catch_up, target) = catch_up(&self.store, &current).await?;
        let mut change = StatusChange::new(
            tenant_id,
            slug.as_str(),
            Some(current.status),
            TenantModuleStatus::Enabled,
            actor.as_str(),
            action,
        );
        change.tenant_seen = Some(&seen);
        if let Some(target) = target {
            change.to = TenantModuleStatus::UpToDate;
            change.set_version = Some(target);
            change.catch_up = &catch_up;
        }
        Ok(self.store.tenant_module_move(&change).await?)
    }

    /// A Master Admin suspends a tenant's module in use (payment, limits): SUSPENDED, data
    /// kept and frozen; only a Master Admin lifts it ([`Lifecycle::resume`]).
    pub async fn suspend(
        &self,
        tenant_id: TenantId,
        slug: &str,
        actor: &Actor,
        reason: &str,
    ) -> Result<TenantModuleRecord, LifecycleError> {
        let slug = Slug::parse(slug)?;
        let current = self.tenant_module(tenant_id, &slug).await?;
        status::check_suspend(slug.as_str(), current.status, actor)?;
        let change = StatusChange::new(
            tenant_id,
            slug.as_str(),
            Some(current.status),
            TenantModuleStatus::Suspended,
            actor.as_str(),
            "module.suspend",
        )
        .because(reason);
        Ok(self.store.tenant_module_move(&change).await?)
    }

    /// A Master Admin lifts a suspension (as [`Lifecycle::reenable`], which refuses it to
    /// anyone else).
    pub async fn resume(
        &self,
        tenant_id: TenantId,
        slug: &str,
        actor: &Actor,
    ) -> Result<TenantModuleRecord, LifecycleError> {
        let parsed = Slug::parse(slug)?;
        let current = self.tenant_module(tenant_id, &parsed).await?;
        let suspended = current.status == TenantModuleStatus::Suspended
            || current.disabled_from == Some(TenantModuleStatus::Suspended);
        if !suspended {
            return Err(DomainError::InvalidTransition {
                what: "tenant module (only a suspension is resumed)",
                from: current.status.as_str(),
                to: TenantModuleStatus::Enabled.as_str(),
            }
            .into());
        }
        self.reenable(tenant_id, slug, actor).await
    }

    /// A Master Admin repairs a tenant module whose record disagrees with the module: one
    /// left UPGRADING with no upgrade run in progress goes back to ENABLED; one in use at a
    /// version older than its tables catches up (post-upgrade SQL for it) and is
    /// UP_TO_DATE; one left REQUESTED is admitted. Returns the record and what was done; a
    /// consistent record is [`LifecycleError::NothingDone`].
    pub async fn repair(
        &self,
        tenant_id: TenantId,
        slug: &str,
        actor: &Actor,
    ) -> Result<(TenantModuleRecord, Vec<String>), LifecycleError> {
        let slug = Slug::parse(slug)?;
        if actor.authority != Authority::MasterAdmin {
            return Err(DomainError::NotPermitted {
                what: format!("repairing `{slug}`"),
                reason: "only a Master Admin repairs a tenant module".into(),
            }
            .into());
        }
        let mut current = self.tenant_module(tenant_id, &slug).await?;
        let mut done = Vec::new();
        if current.status == TenantModuleStatus::Upgrading && !self.upgrading(&slug).await? {
            let change = StatusChange::new(
                tenant_id,
                slug.as_str(),
                Some(TenantModuleStatus::Upgrading),
                TenantModuleStatus::Enabled,
                actor.as_str(),
                "module.repair",
            )
            .because("repaired: left UPGRADING with no upgrade in progress");
            current = self.store.tenant_module_move(&change).await?;
            done.push("UPGRADING with no upgrade in progress → ENABLED".to_string());
        }
        if current.status.satisfies_dependency() {
            let (catch_up, target) = catch_up(&self.store, &current).await?;
            if let Some(target) = target {
                if current.status == TenantModuleStatus::UpToDate {
                    // UP_TO_DATE → UP_TO_DATE is no move: go through UPGRADING, audited.
                    let change = StatusChange::new(
                        tenant_id,
                        slug.as_str(),
                        Some(TenantModuleStatus::UpToDate),
                        TenantModuleStatus::Upgrading,
                        actor.as_str(),
                        "module.repair",
                    );
                    current = self.store.tenant_module_move(&change).await?;
                }
                let mut change = StatusChange::new(
                    tenant_id,
                    slug.as_str(),
                    Some(current.status),
                    TenantModuleStatus::UpToDate,
                    actor.as_str(),
                    "module.repair",
                )
                .because("repaired: caught up with the upgrade it missed");
                change.set_version = Some(target);
                change.catch_up = &catch_up;
                current = self.store.tenant_module_move(&change).await?;
                done.push(format!(
                    "caught up with {} missed version(s): UP_TO_DATE",
                    catch_up.len()
                ));
            }
        }
        if done.is_empty() && current.status == TenantModuleStatus::Requested {
            self.reconcile(std::time::Duration::ZERO).await?;
            current = self.tenant_module(tenant_id, &slug).await?;
            done.push(format!("REQUESTED → {}", current.status));
        }
        if done.is_empty() {
            return Err(LifecycleError::NothingDone(format!(
                "tenant {tenant_id}'s `{slug}` is {} and consistent with the module: nothing to repair",
                current.status
            )));
        }
        Ok((current, done))
    }

    /// Is an upgrade of `slug` in progress (a `module_upgrade` run that has not ended)?
    async fn upgrading(&self, slug: &Slug) -> Result<bool, LifecycleError> {
        for state in [RunState::Queued, RunState::Running, RunState::Compensating] {
            let runs = self.store.runs_list(Some(state), 500).await?;
            if runs.iter().any(|r| {
                r.workflow == UPGRADE_WORKFLOW && r.params["module"] == json!(slug.as_str())
            }) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Archive a DISABLED or SUSPENDED tenant module (a suspended one by a Master Admin only):
    /// starts the `module_archive` run, which
    /// exports the tenant's rows to the export storage, verifies them, and only then removes
    /// them. Refused, as a disable is, while a module that depends on it is in use or on its
    /// way in (a suspended one may have such). Who asked is in the audit log with the run.
    pub async fn archive(
        &self,
        tenant_id: TenantId,
        slug: &str,
        actor: &Actor,
    ) -> Result<RunId, LifecycleError> {
        let slug = Slug::parse(slug)?;
        let current = self.tenant_module(tenant_id, &slug).await?;
        status::check_archive(slug.as_str(), current.status, current.disabled_from, actor)?;
        // (Checked again by the run's last step, as it removes the data.)
        let (dependants, _) = dependants(&self.store, tenant_id, &slug).await?;
        status::check_no_dependants(slug.as_str(), &dependants)?;
        let (run, started) = self
            .engine
            .start(
                ARCHIVE_WORKFLOW,
                // Who asked travels with the run: its audit below is a write of its own.
                json!({"tenant_id": tenant_id, "module": slug.as_str(),
                       "requested_by": actor.as_str()}),
                None,
            )
            .await?;
        if started {
            self.store
                .audit_append(
                    actor.as_str(),
                    "module.archive_requested",
                    Some(tenant_id),
                    Some(slug.as_str()),
                    "tenant_module",
                    &json!({"run": run, "status": current.status}),
                )
                .await?;
        }
        Ok(run)
    }

    /// Replace a tenant module's settings, valid against its version's JSON Schema (checked
    /// before anything is written). Returns the previous settings.
    pub async fn set_settings(
        &self,
        tenant_id: TenantId,
        slug: &str,
        settings: &Value,
        actor: &Actor,
    ) -> Result<Value, LifecycleError> {
        let slug = Slug::parse(slug)?;
        let current = self.tenant_module(tenant_id, &slug).await?;
        self.check_settings(&current, settings).await?;
        Ok(self
            .store
            .settings_set(tenant_id, slug.as_str(), settings, actor.as_str())
            .await?)
    }

    async fn check_settings(
        &self,
        module: &TenantModuleRecord,
        value: &Value,
    ) -> Result<(), LifecycleError> {
        let versions = self.store.versions_of(&module.module).await?;
        let schema = versions
            .iter()
            .find(|v| Some(v.id) == module.version_id)
            .and_then(|v| v.settings_schema.as_ref());
        Ok(settings::validate(&module.module, schema, value)?)
    }

    /// A tenant's change of its module (state, settings, or both), all checked before
    /// anything is written: invalid settings or a refused state change write nothing.
    pub async fn change(
        &self,
        tenant_id: TenantId,
        slug: &str,
        change: &ModuleChange,
        actor: &Actor,
    ) -> Result<ModuleChanged, LifecycleError> {
        let parsed = Slug::parse(slug)?;
        let current = self.tenant_module(tenant_id, &parsed).await?;
        if let Some(value) = &change.settings {
            self.check_settings(&current, value).await?;
        }
        let mut changed = ModuleChanged::default();
        match change.state {
            None => {}
            Some(TenantModuleStatus::Enabled) => {
                changed.module = Some(self.reenable(tenant_id, slug, actor).await?)
            }
            Some(TenantModuleStatus::Disabled) => {
                changed.module = Some(self.disable(tenant_id, slug, actor).await?)
            }
            Some(TenantModuleStatus::Archived) => {
                changed.run = Some(self.archive(tenant_id, slug, actor).await?)
            }
            Some(other) => {
                return Err(DomainError::NotPermitted {
                    what: format!("setting a tenant module to {other}"),
                    reason: "a tenant sets ENABLED, DISABLED or ARCHIVED".into(),
                }
                .into());
            }
        }
        if let Some(value) = &change.settings {
            changed.previous_settings = Some(
                self.store
                    .settings_set(tenant_id, parsed.as_str(), value, actor.as_str())
                    .await?,
            );
        }
        Ok(changed)
    }
}

/// The tenant's modules that depend on `slug` and need it on (in use, or on their way in),
/// and every module of the catalog that depends on it as the tenant has it (what the rule
/// read, for [`StatusChange::tenant_seen`]).
pub(crate) async fn dependants(
    store: &SharedStore,
    tenant_id: TenantId,
    slug: &Slug,
) -> Result<(Vec<String>, Vec<Seen>), StoreError> {
    let catalog = store.modules_list().await?;
    let modules = store.tenant_modules(tenant_id).await?;
    let depending = catalog
        .iter()
        .filter(|c| c.dependencies.iter().any(|d| d == slug.as_str()))
        .map(|c| &c.slug);
    let read = seen(&modules, depending);
    let holding = read
        .iter()
        .filter(|(_, status)| status.is_some_and(TenantModuleStatus::holds_dependencies))
        .map(|(module, _)| module.clone())
        .collect();
    Ok((holding, read))
}

/// The tenant's `names` modules, as an operation's rule read them among its `modules` (see
/// [`StatusChange::tenant_seen`]).
pub(super) fn seen<'a>(
    modules: &[TenantModuleRecord],
    names: impl IntoIterator<Item = &'a String>,
) -> Vec<Seen> {
    names
        .into_iter()
        .map(|name| {
            let status = modules.iter().find(|m| &m.module == name).map(|m| m.status);
            (name.clone(), status)
        })
        .collect()
}

/// The tenant's modules by slug, with their statuses.
pub(super) fn statuses(modules: &[TenantModuleRecord]) -> HashMap<String, TenantModuleStatus> {
    modules
        .iter()
        .map(|m| (m.module.clone(), m.status))
        .collect()
}

/// The versions a tenant module missed (newer than its own, up to the one the module's tables
/// are at), and that version; nothing when it is current. What a tenant coming back into use
/// (or into use for the first time) runs before it is at the installed version.
pub(crate) async fn catch_up(
    store: &SharedStore,
    module: &TenantModuleRecord,
) -> Result<(Vec<i64>, Option<i64>), StoreError> {
    let versions = store.versions_of(&module.module).await?;
    let (Some(installed), Some(own)) = (installed(&versions), module.version_id) else {
        return Ok((Vec::new(), None));
    };
    let position = |id| versions.iter().position(|v| v.id == id);
    match (position(own), position(installed.id)) {
        (Some(own), Some(at)) if own < at => Ok((
            versions[own + 1..=at].iter().map(|v| v.id).collect(),
            Some(installed.id),
        )),
        _ => Ok((Vec::new(), None)),
    }
}
