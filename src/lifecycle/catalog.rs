//! The catalog side of the lifecycle: publishing `catalog/*.toml`, maturity moves (which
//! notify tenants), plans and plan-module sync, the catalog a tenant sees (SPEC §4.1), and
//! a module's upgrade and rollback for all its tenants.

use super::{DEPRECATION_WORKFLOW, Lifecycle, LifecycleError, UPGRADE_WORKFLOW};
use crate::domain::DomainError;
use crate::domain::actor::{Actor, Authority};
use crate::domain::availability::{self, Listing};
use crate::domain::catalog::Catalog;
use crate::domain::ident::Slug;
use crate::domain::maturity::Maturity;
use crate::domain::status::{self, TenantModuleStatus};
use crate::store::domain::{ModuleRecord, NewVersion, PlanSynced, RollbackPlan, TenantId};
use crate::store::runs::RunId;
use serde_json::json;

/// A module as a tenant's catalog lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Listed {
    #[serde(flatten)]
    pub module: ModuleRecord,
    /// How it lists: stable, alpha, beta (badge), legacy (badge), deprecated (warning).
    pub listing: Listing,
}

fn master_only(actor: &Actor, what: String) -> Result<(), LifecycleError> {
    if matches!(actor.authority, Authority::MasterAdmin | Authority::System) {
        Ok(())
    } else {
        Err(DomainError::NotPermitted {
            what,
            reason: "only a Master Admin does this".into(),
        }
        .into())
    }
}

impl Lifecycle {
    /// Publish a catalog (from `catalog/*.toml`): every module created or updated (a
    /// module's maturity is taken from the file only when the module is new), every version
    /// published (an already published version is left as it is). Returns how many modules
    /// and versions the catalog holds.
    pub async fn load_catalog(
        &self,
        catalog: &Catalog,
        actor: &Actor,
    ) -> Result<(usize, usize), LifecycleError> {
        master_only(actor, "publishing the catalog".into())?;
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
            self.store.module_put(&record, actor.as_str()).await?;
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

    /// The catalog as `tenant_id` sees it (SPEC §4.1): ALPHA only for internal testers,
    /// BETA with its badge, MAINTENANCE as legacy, DEPRECATED only with `show_legacy`,
    /// PLANNED, IN_DEVELOPMENT and RETIRED never.
    pub async fn catalog_for(
        &self,
        tenant_id: TenantId,
        show_legacy: bool,
    ) -> Result<Vec<Listed>, LifecycleError> {
        let tenant = self
            .store
            .tenant_get(tenant_id)
            .await?
            .ok_or(LifecycleError::NoTenant(tenant_id))?;
        Ok(self
            .store
            .modules_list()
            .await?
            .into_iter()
            .filter_map(|module| {
                availability::listing(module.maturity, tenant.internal_tester, show_legacy)
                    .map(|listing| Listed { module, listing })
            })
            .collect())
    }

    /// Upgrade a module to `version` for every tenant using it (a Master Admin): starts the
    /// `module_upgrade` run (a major upgrade backs the tables up to the export storage
    /// first).
    pub async fn upgrade(
        &self,
        slug: &str,
        version: &str,
        actor: &Actor,
    ) -> Result<RunId, LifecycleError> {
        let slug = Slug::parse(slug)?;
        master_only(actor, format!("upgrading `{slug}`"))?;
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
                json!({"module": slug.as_str(), "version": version}),
                None,
            )
            .await?;
        Ok(run)
    }

    /// Roll a module's last upgrade back by hand (a Master Admin), within `window` of it
    /// (refused after): the down SQL of every version after the one the upgraded tenants came
    /// from, latest first, and every upgraded tenant back to ENABLED at that version, in one
    /// transaction. Refused while a tenant joined the module at a version it would undo.
    /// Returns the tenants rolled back.
    pub async fn rollback(
        &self,
        slug: &str,
        window: std::time::Duration,
        actor: &Actor,
    ) -> Result<Vec<TenantId>, LifecycleError> {
        let slug = Slug::parse(slug)?;
        master_only(actor, format!("rolling `{slug}` back"))?;
        let records = self.store.module_tenants(slug.as_str()).await?;
        let upgraded: Vec<_> = records
            .iter()
            .filter(|m| m.status == TenantModuleStatus::UpToDate && m.previous_version_id.is_some())
            .collect();
        let Some(first) = upgraded.first() else {
            return Err(LifecycleError::NothingDone(format!(
                "module `{slug}` has no upgraded tenant to roll back"
            )));
        };
        let (current, previous) = (first.version_id, first.previous_version_id);
        if upgraded
            .iter()
            .any(|m| (m.version_id, m.previous_version_id) != (current, previous))
        {
            return Err(LifecycleError::Store(crate::store::StoreError::Conflict(
                format!("the tenants of `{slug}` were not upgraded together: repair them first"),
            )));
        }
        let now = chrono::Utc::now();
        for tenant in &upgraded {
            status::check_rollback_window(slug.as_str(), tenant.upgraded_at, now, window)?;
        }
        let previous = previous.unwrap_or_default();
        // The versions after `previous` that are installed, latest first: their down SQL.
        let versions = self.store.versions_of(slug.as_str()).await?;
        let from = versions
            .iter()
            .position(|v| v.id == previous)
            .ok_or_else(|| LifecycleError::NoVersion(slug.to_string()))?;
        let undo: Vec<i64> = versions[from + 1..]
            .iter()
            .rev()
            .filter(|v| v.migrated_at.is_some())
            .map(|v| v.id)
            .collect();
        let stranded: Vec<TenantId> = records
            .iter()
            .filter(|m| m.version_id.is_some_and(|v| undo.contains(&v)))
            .filter(|m| {
                !matches!(
                    m.status,
                    TenantModuleStatus::UpToDate | TenantModuleStatus::Archived
                )
            })
            .map(|m| m.tenant_id)
            .collect();
        if !stranded.is_empty() {
            return Err(LifecycleError::Store(crate::store::StoreError::Conflict(
                format!(
                    "tenants {stranded:?} joined `{slug}` at a version the rollback would undo: \
                 rollback refused"
                ),
            )));
        }
        let tenants: Vec<TenantId> = upgraded.iter().map(|m| m.tenant_id).collect();
        let seen: Vec<_> = records
            .iter()
            .map(|m| (m.tenant_id, m.status, m.version_id))
            .collect();
        // The reason names versions as people know them (1.1.0), not by their row ids.
        let name_of = |id: Option<i64>| {
            versions
                .iter()
                .find(|v| Some(v.id) == id)
                .map(|v| v.version.clone())
                .unwrap_or_else(|| "?".into())
        };
        let reason = format!(
            "rolled back from {} to {}",
            name_of(current),
            name_of(Some(previous))
        );
        self.store
            .module_rollback(&RollbackPlan {
                module: slug.as_str(),
                undo: &undo,
                previous,
                tenants: &tenants,
                seen: &seen,
                reason: &reason,
                actor: actor.as_str(),
            })
            .await?;
        Ok(tenants)
    }

    /// Move a catalog module's maturity (a Master Admin). To DEPRECATED or RETIRED, this
    /// starts the `module_deprecation` run that notifies every impacted tenant by webhook
    /// and then applies the retirement (`force`: retired by policy, tenants still using it
    /// are SUSPENDED). Asking again for the maturity the module already has starts the run
    /// if a crash kept it from starting, and otherwise returns the same run (a forced
    /// retirement after a plain one starts its own). Returns the
    /// previous maturity and the run.
    pub async fn set_maturity(
        &self,
        slug: &str,
        to: Maturity,
        force: bool,
        actor: &Actor,
    ) -> Result<(Maturity, Option<RunId>), LifecycleError> {
        let slug = Slug::parse(slug)?;
        master_only(actor, format!("moving `{slug}`'s maturity"))?;
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
                .module_set_maturity(slug.as_str(), to, actor.as_str())
                .await?
        };
        if !notifies {
            return Ok((from, None));
        }
        let start = |force: bool, key: String| {
            self.engine.start(
                DEPRECATION_WORKFLOW,
                json!({"module": slug.as_str(), "maturity": to.to_string(), "force": force}),
                Some(key),
            )
        };
        let (run, _) = start(force, format!("{slug}:{to}")).await?;
        // Forced after a plain run: a run of its own (the plain one suspends no one). Any
        // other request asked again gets the run already started: nothing is sent twice.
        let plain = self.engine.run(run).await?.params["force"] != json!(true);
        if force && plain {
            let (forced, _) = start(true, format!("{slug}:{to}:forced")).await?;
            return Ok((from, Some(forced)));
        }
        Ok((from, Some(run)))
    }

    /// Add a module to a plan and sync it to the plan's active subscribers (their
    /// provisioning runs are started by the reconciler of `steward worker`). Returns whether
    /// it was added (false: it was in the plan already) and the sync's summary.
    pub async fn plan_add_module(
        &self,
        plan: &str,
        slug: &str,
        actor: &Actor,
    ) -> Result<(bool, Vec<PlanSynced>), LifecycleError> {
        let slug = Slug::parse(slug)?;
        master_only(actor, format!("adding `{slug}` to a plan"))?;
        let added = self
            .store
            .plan_add_module(plan, slug.as_str(), actor.as_str())
            .await?;
        let synced = self
            .sync_plans(Some(plan), Some(slug.as_str()), actor)
            .await?;
        Ok((added, synced))
    }

    /// Sync plan modules to tenants with an active subscription (one plan or all, one module
    /// or all): set-based, never removes, idempotent. The new tenant modules are
    /// PROVISIONING; the reconciler of `steward worker` starts their runs. A tenant is
    /// given a module only once every module it depends on is enabled for it; the others
    /// are counted in the summary with the reason, and a later sync gives it to them.
    pub async fn sync_plans(
        &self,
        plan: Option<&str>,
        slug: Option<&str>,
        actor: &Actor,
    ) -> Result<Vec<PlanSynced>, LifecycleError> {
        let slug = slug.map(Slug::parse).transpose()?;
        Ok(self
            .store
            .plan_sync(plan, slug.as_ref().map(Slug::as_str), actor.as_str())
            .await?)
    }
}
