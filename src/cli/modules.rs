//! `steward tenant …`, `steward catalog …`, `steward module …` and `steward audit`: the
//! module lifecycle from the command line (the HTTP API comes later).

use super::{CliError, load_engine, load_kinds, open_store, output};
use crate::config::Settings;
use crate::domain::catalog::Catalog;
use crate::domain::maturity::Maturity;
use crate::lifecycle::Lifecycle;
use crate::store::domain::{NewTenant, TenantId};
use clap::Subcommand;
use serde_json::json;

#[derive(Debug, Subcommand)]
pub(crate) enum TenantCommand {
    /// Create a tenant.
    Create {
        /// A short unique name: lowercase letters, digits and `_`.
        slug: String,
        /// A name for people.
        #[arg(long)]
        name: Option<String>,
        /// May request ALPHA modules (with approval).
        #[arg(long)]
        internal_tester: bool,
        /// Opted in to BETA modules.
        #[arg(long)]
        beta: bool,
    },
    /// A tenant's modules and their statuses.
    Modules {
        /// The tenant's id.
        tenant: TenantId,
    },
    /// Set where a tenant receives webhooks, and the secret that signs them.
    Webhook {
        /// The tenant's id.
        tenant: TenantId,
        /// Where the tenant receives webhooks (https; public addresses only unless STEWARD_WEBHOOK_ALLOW says otherwise).
        url: String,
        /// The signing secret (from the environment, so it stays out of shell history).
        #[arg(long, env = "STEWARD_WEBHOOK_SECRET", hide_env_values = true)]
        secret: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum CatalogCommand {
    /// Publish `catalog/*.toml` (modules and versions) to the database.
    Load,
    /// The modules in the database.
    List,
    /// Move a module's maturity (e.g. GA → DEPRECATED). DEPRECATED and RETIRED notify every
    /// impacted tenant by webhook; RETIRED then disables the tenants that turned it off.
    SetMaturity {
        /// The module's slug (e.g. `inventory`).
        module: String,
        /// ALPHA, BETA, GA, DEPRECATED or RETIRED.
        maturity: String,
        /// Retired by policy: tenants still using the module are SUSPENDED.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PlanCommand {
    /// Create a plan.
    Create {
        /// A short unique name: lowercase letters, digits and `_`.
        slug: String,
        /// A name for people.
        name: String,
    },
    /// Add a module to a plan and sync it to the plan's active subscribers.
    AddModule {
        /// The plan's slug.
        plan: String,
        /// The module's slug (e.g. `inventory`).
        module: String,
    },
    /// Take a module out of a plan (tenants that have it keep it).
    RemoveModule {
        /// The plan's slug.
        plan: String,
        /// The module's slug (e.g. `inventory`).
        module: String,
    },
    /// Subscribe a tenant to a plan.
    Subscribe {
        /// The tenant's id.
        tenant: TenantId,
        /// The plan's slug.
        plan: String,
        /// active, inactive, cancelled or expired.
        #[arg(long, default_value = "active")]
        status: String,
    },
    /// Give tenants with an active subscription their plan's modules (never removes).
    SyncModules {
        /// One plan (or --all).
        plan: Option<String>,
        /// Only this module.
        #[arg(long)]
        module: Option<String>,
        /// Every plan.
        #[arg(long, conflicts_with = "plan")]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ModuleCommand {
    /// A tenant requests a module (its latest version).
    Request {
        /// The tenant's id.
        tenant: TenantId,
        /// The module's slug (e.g. `inventory`).
        module: String,
    },
    /// A Master Admin approves a pending request.
    Approve {
        /// The tenant's id.
        tenant: TenantId,
        /// The module's slug (e.g. `inventory`).
        module: String,
    },
    /// A tenant turns a module off (DISABLED: data kept, frozen).
    Disable {
        /// The tenant's id.
        tenant: TenantId,
        /// The module's slug (e.g. `inventory`).
        module: String,
    },
    /// Turn a DISABLED module back on (one that was in use; a rejected or failed one is
    /// requested again). Catches up with an upgrade it missed.
    Enable {
        /// The tenant's id.
        tenant: TenantId,
        /// The module's slug (e.g. `inventory`).
        module: String,
    },
    /// A Master Admin suspends a module in use (payment, limits).
    Suspend {
        /// The tenant's id.
        tenant: TenantId,
        /// The module's slug (e.g. `inventory`).
        module: String,
        /// Why (shown to the tenant and kept in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// A Master Admin lifts a suspension.
    Resume {
        /// The tenant's id.
        tenant: TenantId,
        /// The module's slug (e.g. `inventory`).
        module: String,
    },
    /// Repair a tenant module whose record disagrees with the module (left UPGRADING with no
    /// upgrade in progress, behind an upgrade it missed, left REQUESTED); exits non-zero when
    /// there is nothing to repair.
    Repair {
        /// The tenant's id.
        tenant: TenantId,
        /// The module's slug (e.g. `inventory`).
        module: String,
    },
    /// Archive a DISABLED or SUSPENDED module: export its data, then remove it.
    Archive {
        /// The tenant's id.
        tenant: TenantId,
        /// The module's slug (e.g. `inventory`).
        module: String,
    },
    /// Show a tenant module's settings, or replace them with `--set JSON` (audited).
    Settings {
        /// The tenant's id.
        tenant: TenantId,
        /// The module's slug (e.g. `inventory`).
        module: String,
        /// The new settings, a JSON object (checked against the version's JSON Schema).
        #[arg(long, value_name = "JSON")]
        set: Option<String>,
    },
    /// Upgrade a module to a version for all its tenants (runs on `steward worker`).
    Upgrade {
        /// The module's slug (e.g. `inventory`).
        module: String,
        /// A published version of the module (semver).
        version: String,
    },
    /// Roll a module's last upgrade back (within STEWARD_ROLLBACK_WINDOW_HOURS of it).
    Rollback {
        /// The module's slug (e.g. `inventory`).
        module: String,
    },
    /// Put back the rows a module's tables lost from the backup a major upgrade run made
    /// (verified first; only into the version backed up; rows already there and frozen
    /// tenants' rows are left alone). Exits non-zero when it restored nothing.
    RestoreBackup {
        /// The module's slug (e.g. `inventory`).
        module: String,
        /// The `module_upgrade` run that made the backup (`steward runs list`).
        #[arg(long)]
        run: crate::store::runs::RunId,
    },
    /// A Master Admin rejects a pending request.
    Reject {
        /// The tenant's id.
        tenant: TenantId,
        /// The module's slug (e.g. `inventory`).
        module: String,
        /// Why (shown to the tenant and kept in the audit log).
        #[arg(long)]
        reason: String,
    },
}

/// The lifecycle over the workflow engine of `workflows/` (provisioning runs are started
/// here and run by `steward worker`).
async fn lifecycle(settings: &Settings) -> Result<Lifecycle, CliError> {
    let kinds = load_kinds(settings)?;
    let store = open_store(settings).await?;
    let engine = load_engine(settings, store, &kinds)?;
    Ok(Lifecycle::new(engine)?)
}

use super::operator_actor as actor;

pub(crate) async fn tenant(settings: &Settings, command: TenantCommand) -> Result<(), CliError> {
    let store = open_store(settings).await?;
    match command {
        TenantCommand::Create {
            slug,
            name,
            internal_tester,
            beta,
        } => {
            let created = store
                .tenant_create(&NewTenant {
                    name: name.unwrap_or_else(|| slug.clone()),
                    slug,
                    internal_tester,
                    beta_opt_in: beta,
                    ..Default::default()
                })
                .await?;
            output::record(settings.output, &created)
        }
        TenantCommand::Modules { tenant } => {
            output::record(settings.output, &store.tenant_modules(tenant).await?)
        }
        TenantCommand::Webhook {
            tenant,
            url,
            secret,
        } => {
            if secret.is_empty() {
                return Err(CliError::Usage("a webhook needs a non-empty secret".into()));
            }
            let key = settings
                .secret_key()
                .map_err(CliError::Usage)?
                .ok_or_else(|| {
                    CliError::Usage(
                        "set STEWARD_SECRET_KEY (64 hex digits, e.g. `openssl rand -hex 32`): \
                     webhook secrets are stored sealed with it"
                            .into(),
                    )
                })?;
            settings
                .webhook_policy()
                .map_err(CliError::Usage)?
                .check_url(&url)
                .await
                .map_err(CliError::Usage)?;
            let secret = key
                .seal(&secret)
                .map_err(|e| CliError::Failed(e.to_string()))?;
            let target = crate::store::data::WebhookTarget { url, secret };
            store.tenant_set_webhook(tenant, Some(&target)).await?;
            output::done(
                settings.output,
                format!("tenant {tenant}: webhooks go to {}", target.url),
                json!({"tenant": tenant, "webhook_url": target.url}),
            );
            Ok(())
        }
    }
}

pub(crate) async fn catalog(settings: &Settings, command: CatalogCommand) -> Result<(), CliError> {
    match command {
        CatalogCommand::Load => {
            // The files are checked before the database is touched.
            let catalog = Catalog::load_dir(&settings.catalog_dir)?;
            let life = lifecycle(settings).await?;
            let (modules, versions) = life.load_catalog(&catalog, &actor()).await?;
            output::done(
                settings.output,
                format!("catalog loaded: {modules} modules, {versions} versions"),
                json!({"modules": modules, "versions": versions}),
            );
            Ok(())
        }
        CatalogCommand::List => {
            let store = open_store(settings).await?;
            output::record(settings.output, &store.modules_list().await?)
        }
        CatalogCommand::SetMaturity {
            module,
            maturity,
            force,
        } => {
            let to: Maturity = maturity
                .parse()
                .map_err(|e: crate::domain::DomainError| CliError::Usage(e.to_string()))?;
            let life = lifecycle(settings).await?;
            let (from, run) = life.set_maturity(&module, to, force, &actor()).await?;
            let mut text = format!("module {module}: {from} → {to}");
            if let Some(run) = run {
                text.push_str(&format!(
                    "\ndeprecation run {run} started: it notifies every impacted tenant"
                ));
            }
            output::done(
                settings.output,
                text,
                json!({"module": module, "from": from.to_string(), "to": to.to_string(), "run": run}),
            );
            Ok(())
        }
    }
}

pub(crate) async fn module(settings: &Settings, command: ModuleCommand) -> Result<(), CliError> {
    let life = lifecycle(settings).await?;
    match command {
        ModuleCommand::Request { tenant, module } => {
            let requested = life.request(tenant, &module, &actor()).await?;
            if let Some(warning) = &requested.warning {
                eprintln!("warning: {warning}");
            }
            if let Some(run) = requested.run {
                eprintln!("provisioning run {run} started");
            }
            output::record(settings.output, &requested.module)
        }
        ModuleCommand::Approve { tenant, module } => {
            let (record, run) = life.approve(tenant, &module, &actor()).await?;
            eprintln!("provisioning run {run} started");
            output::record(settings.output, &record)
        }
        ModuleCommand::Disable { tenant, module } => output::record(
            settings.output,
            &life.disable(tenant, &module, &actor()).await?,
        ),
        ModuleCommand::Enable { tenant, module } => output::record(
            settings.output,
            &life.reenable(tenant, &module, &actor()).await?,
        ),
        ModuleCommand::Archive { tenant, module } => {
            let run = life.archive(tenant, &module, &actor()).await?;
            output::done(
                settings.output,
                format!("archive run {run} started"),
                json!({"run": run}),
            );
            Ok(())
        }
        ModuleCommand::Settings {
            tenant,
            module,
            set,
        } => {
            if let Some(text) = set {
                let value: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| CliError::Usage(format!("--set is not valid JSON: {e}")))?;
                // Validated against the version's JSON Schema, as the API does.
                life.set_settings(tenant, &module, &value, &actor()).await?;
            }
            let store = open_store(settings).await?;
            output::record(settings.output, &store.settings_get(tenant, &module).await?)
        }
        ModuleCommand::Upgrade { module, version } => {
            let run = life.upgrade(&module, &version, &actor()).await?;
            output::done(
                settings.output,
                format!("upgrade run {run} started"),
                json!({"run": run}),
            );
            Ok(())
        }
        ModuleCommand::Rollback { module } => {
            let window =
                std::time::Duration::from_secs(settings.rollback_window_hours.saturating_mul(3600));
            let tenants = life.rollback(&module, window, &actor()).await?;
            output::done(
                settings.output,
                format!("module {module} rolled back for {} tenants", tenants.len()),
                json!({"module": module, "tenants": tenants}),
            );
            Ok(())
        }
        ModuleCommand::RestoreBackup { module, run } => {
            let exports = settings.exports();
            let restored = life
                .restore_backup(exports.as_ref(), &module, run, &actor())
                .await?;
            output::listing(
                settings.output,
                &["table", "rows", "restored", "frozen tenants' rows left out"],
                &restored.tables,
                |t| {
                    vec![
                        t.table.clone(),
                        t.rows.to_string(),
                        t.inserted.to_string(),
                        t.frozen.to_string(),
                    ]
                },
            )?;
            Ok(())
        }
        ModuleCommand::Reject {
            tenant,
            module,
            reason,
        } => output::record(
            settings.output,
            &life.reject(tenant, &module, &actor(), &reason).await?,
        ),
        ModuleCommand::Suspend {
            tenant,
            module,
            reason,
        } => output::record(
            settings.output,
            &life.suspend(tenant, &module, &actor(), &reason).await?,
        ),
        ModuleCommand::Resume { tenant, module } => output::record(
            settings.output,
            &life.resume(tenant, &module, &actor()).await?,
        ),
        ModuleCommand::Repair { tenant, module } => {
            let (record, done) = life.repair(tenant, &module, &actor()).await?;
            for line in &done {
                eprintln!("repaired: {line}");
            }
            output::record(settings.output, &record)
        }
    }
}

pub(crate) async fn plan(settings: &Settings, command: PlanCommand) -> Result<(), CliError> {
    let life = lifecycle(settings).await?;
    let store = open_store(settings).await?;
    let summary = match command {
        PlanCommand::Create { slug, name } => {
            let id = store.plan_create(&slug, &name).await?;
            output::done(
                settings.output,
                format!("plan {slug} created (id {id})"),
                json!({"plan": slug, "id": id}),
            );
            return Ok(());
        }
        PlanCommand::AddModule { plan, module } => {
            let (added, summary) = life.plan_add_module(&plan, &module, &actor()).await?;
            let synced: u64 = summary.iter().map(|line| line.synced).sum();
            for line in summary
                .iter()
                .filter(|l| l.skipped_missing_dependencies > 0)
            {
                eprintln!(
                    "skipped {} tenant(s): {}",
                    line.skipped_missing_dependencies,
                    line.skipped_reason.clone().unwrap_or_default()
                );
            }
            if !added && synced == 0 {
                return Err(CliError::Failed(format!(
                    "plan {plan}: module {module} was in it already, and no tenant lacked it \
                     (nothing done)"
                )));
            }
            let what = if added { "added" } else { "was in it already" };
            output::done(
                settings.output,
                format!("plan {plan}: module {module} {what}; {synced} tenant(s) given it"),
                json!({"plan": plan, "module": module, "added": added, "synced": summary}),
            );
            return Ok(());
        }
        PlanCommand::RemoveModule { plan, module } => {
            let removed = store
                .plan_remove_module(&plan, &module, actor().as_str())
                .await?;
            if !removed {
                return Err(CliError::Failed(format!(
                    "plan {plan}: module {module} was not in it (nothing removed)"
                )));
            }
            output::done(
                settings.output,
                format!("plan {plan}: module {module} removed (tenants keep it)"),
                json!({"plan": plan, "module": module, "removed": true}),
            );
            return Ok(());
        }
        PlanCommand::Subscribe {
            tenant,
            plan,
            status,
        } => {
            let id = store.subscription_create(tenant, &plan, &status).await?;
            output::done(
                settings.output,
                format!("tenant {tenant} subscribed to {plan} ({status}, subscription {id})"),
                json!({"tenant": tenant, "plan": plan, "status": status, "subscription": id}),
            );
            return Ok(());
        }
        PlanCommand::SyncModules { plan, module, all } => {
            if plan.is_none() && !all {
                return Err(CliError::Usage("name a PLAN or pass --all".into()));
            }
            life.sync_plans(plan.as_deref(), module.as_deref(), &actor())
                .await?
        }
    };
    if summary.is_empty() {
        return Err(CliError::Failed(
            "nothing to sync: no active subscription lacks a module of its plan".into(),
        ));
    }
    output::listing(
        settings.output,
        &[
            "plan",
            "module",
            "synced",
            "subscribed",
            "skipped",
            "why skipped",
        ],
        &summary,
        |line| {
            vec![
                line.plan.clone(),
                line.module.clone(),
                line.synced.to_string(),
                line.subscribed.to_string(),
                line.skipped_missing_dependencies.to_string(),
                line.skipped_reason.clone().unwrap_or_default(),
            ]
        },
    )
}

pub(crate) async fn audit(
    settings: &Settings,
    tenant: Option<TenantId>,
    limit: i64,
) -> Result<(), CliError> {
    let store = open_store(settings).await?;
    output::record(settings.output, &store.audit_list(tenant, limit).await?)
}
