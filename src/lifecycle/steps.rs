//! The step handlers of the lifecycle workflows (`workflows/module_provision.toml`):
//!
//! - `module.await_approval`: a pending (ALPHA) request's run waits for the Master Admin's
//!   approval (the `approval` signal, sent only by the approve operation).
//! - `module.migrate`: creates the tenant's module version's tables in the database, once for
//!   all tenants of the module (see [`StepTx::module_migrate`](crate::store::StepTx)). A
//!   migration that fails leaves nothing behind and moves the tenant module to ERROR with the
//!   database's reason, in the same transaction; the run then ends without enabling it.
//! - `module.enable`: PROVISIONING → ENABLED, with what provisioning did as the record; or
//!   ERROR, the run failed, when a dependency is no longer enabled (suspended meanwhile).
//!
//! Both act only on a tenant module that is PROVISIONING (a duplicate or stale run finds it
//! elsewhere and does nothing), and both write in the step's transaction, so a crash
//! between them repeats nothing and loses nothing.

use crate::domain::ident::{ModuleTable, Slug};
use crate::domain::status::TenantModuleStatus;
use crate::export::SharedExports;
use crate::queue::JobError;
use crate::store::StoreError;
use crate::store::domain::{StatusChange, TenantId, TenantModuleRecord};
use crate::workflow::{StepContext, StepFuture, StepRegistry};
use serde_json::{Value, json};

const ACTOR: &str = "workflow:module_provision";

/// The `tenant_id` and `module` parameters of a run about one tenant module.
pub(crate) fn tenant_module_params(ctx: &StepContext<'_>) -> Result<(TenantId, String), JobError> {
    let tenant_id = ctx
        .params
        .get("tenant_id")
        .and_then(|v| {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .ok_or_else(|| JobError::Fatal("parameter tenant_id must be a tenant id".into()))?;
    let module = ctx
        .params
        .get("module")
        .and_then(Value::as_str)
        .ok_or_else(|| JobError::Fatal("parameter module must be a module slug".into()))?;
    Ok((tenant_id, module.to_string()))
}

fn migrate(mut ctx: StepContext<'_>) -> StepFuture<'_> {
    Box::pin(async move {
        let (tenant_id, module) = tenant_module_params(&ctx)?;
        let current = ctx
            .store()
            .tenant_module_get(tenant_id, &module)
            .await?
            .ok_or_else(|| {
                JobError::Fatal(format!("tenant {tenant_id} has not requested `{module}`"))
            })?;
        if current.status != TenantModuleStatus::Provisioning {
            return Ok(json!({"skipped": format!("the module is {}", current.status)}));
        }
        let version_id = current
            .version_id
            .ok_or_else(|| JobError::Fatal(format!("`{module}` has no version to provision")))?;
        let tx = ctx.tx().await?;
        match tx.module_migrate(&module, version_id).await {
            Ok(report) => serde_json::to_value(report).map_err(|e| JobError::Fatal(e.to_string())),
            Err(StoreError::Migration(reason)) => {
                let reason = format!("provisioning failed: {reason}");
                tx.tenant_module_move(
                    &StatusChange::new(
                        tenant_id,
                        &module,
                        Some(TenantModuleStatus::Provisioning),
                        TenantModuleStatus::Error,
                        ACTOR,
                        "module.provision_failed",
                    )
                    .because(&reason),
                )
                .await?;
                // The ERROR move commits with the step; the run ends failed, not completed.
                ctx.fail_run(reason.clone());
                Ok(json!({"failed": reason}))
            }
            Err(StoreError::Domain(rule)) => Err(JobError::Fatal(rule.to_string())),
            Err(other) => Err(other.into()),
        }
    })
}

fn enable(mut ctx: StepContext<'_>) -> StepFuture<'_> {
    Box::pin(async move {
        let input = ctx.input.clone();
        if input.get("failed").is_some() || input.get("skipped").is_some() {
            return Ok(input);
        }
        let (tenant_id, module) = tenant_module_params(&ctx)?;
        // Its dependencies were enabled when it was requested and cannot be turned off while
        // it provisions, but a Master Admin may have suspended one: then it is not turned on
        // (ERROR with the reason; the tenant requests it again once the dependency is back).
        let dependencies = match ctx.store().module_get(&module).await? {
            Some(record) => record.dependencies,
            None => Vec::new(),
        };
        let modules = ctx.store().tenant_modules(tenant_id).await?;
        let read = super::switch::seen(&modules, &dependencies);
        let refused = crate::domain::status::check_dependencies(
            &module,
            &dependencies,
            &super::switch::statuses(&modules),
        )
        .err()
        .map(|rule| format!("provisioning failed: {rule}"));
        let mut change = StatusChange::new(
            tenant_id,
            &module,
            Some(TenantModuleStatus::Provisioning),
            TenantModuleStatus::Enabled,
            ACTOR,
            "module.enable",
        );
        change.provisioning = Some(&input);
        change.tenant_seen = Some(&read);
        // An upgrade that landed since the request: the tenant joins at the version the
        // tables are at, its missed post-upgrade steps run first.
        let (catch_up, target) = match ctx.store().tenant_module_get(tenant_id, &module).await? {
            Some(current) => super::switch::catch_up(ctx.store(), &current).await?,
            None => (Vec::new(), None),
        };
        change.set_version = target;
        change.catch_up = &catch_up;
        if let Some(reason) = &refused {
            change.to = TenantModuleStatus::Error;
            change.action = "module.provision_failed";
            change.reason = Some(reason);
        }
        ctx.tx().await?.tenant_module_move(&change).await?;
        if let Some(reason) = refused {
            ctx.fail_run(reason.clone());
            return Ok(json!({"failed": reason}));
        }
        Ok(input)
    })
}

fn param<'a>(ctx: &'a StepContext<'_>, name: &str) -> Result<&'a str, JobError> {
    ctx.params
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| JobError::Fatal(format!("parameter {name} must be text")))
}

const UPGRADE_ACTOR: &str = "workflow:module_upgrade";

/// `upgrade.begin`: every tenant using the module (ENABLED or UP_TO_DATE) → UPGRADING.
fn upgrade_begin(mut ctx: StepContext<'_>) -> StepFuture<'_> {
    Box::pin(async move {
        let module = param(&ctx, "module")?.to_string();
        let wanted = param(&ctx, "version")?.to_string();
        let versions = ctx.store().versions_of(&module).await?;
        let target = versions
            .iter()
            .find(|v| v.version == wanted)
            .ok_or_else(|| JobError::Fatal(format!("`{module}` has no version {wanted}")))?;
        let installed = versions
            .iter()
            .rev()
            .find(|v| v.migrated_at.is_some())
            .ok_or_else(|| JobError::Fatal(format!("`{module}` is not installed")))?;
        let position = |id| versions.iter().position(|v| v.id == id);
        if position(target.id) <= position(installed.id) {
            return Err(JobError::Fatal(format!(
                "`{module}` is at {}; {wanted} is not newer",
                installed.version
            )));
        }
        let users: Vec<(TenantId, TenantModuleStatus)> = ctx
            .store()
            .module_tenants(&module)
            .await?
            .into_iter()
            .filter(|m| m.status.takes_upgrades())
            .map(|m| (m.tenant_id, m.status))
            .collect();
        let reason = format!("upgrading to {wanted}");
        let tx = ctx.tx().await?;
        for (tenant_id, status) in &users {
            tx.tenant_module_move(
                &StatusChange::new(
                    *tenant_id,
                    &module,
                    Some(*status),
                    TenantModuleStatus::Upgrading,
                    UPGRADE_ACTOR,
                    "module.upgrade_begin",
                )
                .because(&reason),
            )
            .await?;
        }
        Ok(json!({
            "module": module,
            "version": wanted,
            "target_id": target.id,
            "from_version": installed.version,
            "major": target.major > installed.major,
            "tables": versions.iter().filter(|v| v.migrated_at.is_some())
                .flat_map(|v| v.tables_created.clone()).collect::<Vec<_>>(),
            "tenants": users.iter().map(|(id, s)| json!([id, s])).collect::<Vec<_>>(),
        }))
    })
}

/// `upgrade.backup`: before a major upgrade, every module table (all tenants' rows, one
/// JSON object per line) to the export storage, read back and verified:
/// `backups/<module>/<from version>/run-<run>/<table>.jsonl`. Never a path from a parameter.
fn upgrade_backup(ctx: StepContext<'_>, exports: SharedExports) -> StepFuture<'_> {
    Box::pin(async move {
        let mut output = ctx.input.clone();
        if output["major"] != json!(true) {
            output["backup"] = Value::Null;
            return Ok(output);
        }
        let module = param(&ctx, "module")?;
        let slug = Slug::parse(module).map_err(|e| JobError::Fatal(e.to_string()))?;
        // A version as published (semver), kept to characters a key may hold.
        let from: String = output["from_version"]
            .as_str()
            .unwrap_or("unknown")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'))
            .collect();
        let prefix = format!("backups/{slug}/{from}/run-{}", ctx.run_id);
        let mut files = serde_json::Map::new();
        let tables: Vec<String> = serde_json::from_value(output["tables"].clone())
            .map_err(|e| JobError::Fatal(e.to_string()))?;
        for name in tables {
            let table =
                ModuleTable::parse(&slug, &name).map_err(|e| JobError::Fatal(e.to_string()))?;
            // Streamed to a scratch file first (memory stays flat), then uploaded in parts.
            // Unique per attempt: two stores in one process (or a retried step) never share it.
            let scratch = std::env::temp_dir().join(format!(
                "steward-backup-{}-{}-{}-{name}.jsonl",
                std::process::id(),
                ctx.run_id,
                fastrand::u64(..)
            ));
            let retry = |e: std::io::Error| {
                JobError::Retryable(format!("cannot write {}: {e}", scratch.display()))
            };
            let mut file = tokio::fs::File::create(&scratch).await.map_err(retry)?;
            let count = ctx.store().module_table_dump(&table, None, &mut file).await;
            drop(file);
            let key = format!("{prefix}/{name}.jsonl");
            let uploaded = match count {
                Ok(count) => crate::export::upload_file(exports.as_ref(), &key, &scratch)
                    .await
                    .map(|digest| (count, digest))
                    .map_err(|e| match e {
                        crate::export::ExportError::Invalid(why) => JobError::Fatal(why),
                        other => JobError::Retryable(other.to_string()),
                    }),
                Err(e) => Err(e.into()),
            };
            let _ = tokio::fs::remove_file(&scratch).await;
            let (count, digest) = uploaded?;
            files.insert(name, json!({"key": key, "rows": count, "digest": digest}));
        }
        output["backup"] =
            json!({"storage": exports.location(), "prefix": prefix, "tables": files});
        Ok(output)
    })
}

/// `upgrade.apply`: pre-upgrade, migration and post-upgrade in one savepoint, then every
/// tenant UP_TO_DATE at the new version; on failure every tenant back where it was, at its
/// version, with the reason (the data never changed: the savepoint rolled it all back).
fn upgrade_apply(mut ctx: StepContext<'_>) -> StepFuture<'_> {
    Box::pin(async move {
        let input = ctx.input.clone();
        let module = param(&ctx, "module")?.to_string();
        let target = input["target_id"]
            .as_i64()
            .ok_or_else(|| JobError::Fatal("no target version in the step input".into()))?;
        let tenants: Vec<(TenantId, TenantModuleStatus)> =
            serde_json::from_value(input["tenants"].clone())
                .map_err(|e| JobError::Fatal(e.to_string()))?;
        let ids: Vec<TenantId> = tenants.iter().map(|(id, _)| *id).collect();
        let tx = ctx.tx().await?;
        let (outcome, failed) = match tx.module_upgrade(&module, target, &ids).await {
            Ok(report) => (
                serde_json::to_value(report).map_err(|e| JobError::Fatal(e.to_string()))?,
                None,
            ),
            Err(StoreError::Migration(reason)) => (json!({"failed": reason}), Some(reason)),
            Err(other) => return Err(other.into()),
        };
        let reason = failed.as_ref().map(|why| {
            format!(
                "upgrade to {} failed and was rolled back: {why}",
                input["version"].as_str().unwrap_or("?")
            )
        });
        // Tenants turned back on while the upgrade ran (at the old version): their rows got
        // the post-upgrade step with the others', and they land at the new version too.
        let joined: Vec<TenantId> =
            serde_json::from_value(outcome["joined"].clone()).unwrap_or_default();
        for tenant_id in &joined {
            for (to, action) in [
                (TenantModuleStatus::Upgrading, "module.upgrade_begin"),
                (TenantModuleStatus::UpToDate, "module.upgrade"),
            ] {
                let mut change =
                    StatusChange::new(*tenant_id, &module, None, to, UPGRADE_ACTOR, action)
                        .because("turned back on while the upgrade ran");
                change.set_version = (to == TenantModuleStatus::UpToDate).then_some(target);
                tx.tenant_module_move(&change).await?;
            }
        }
        for (tenant_id, before) in &tenants {
            let (to, action, set_version) = match &failed {
                None => (TenantModuleStatus::UpToDate, "module.upgrade", Some(target)),
                Some(_) => (*before, "module.upgrade_failed", None),
            };
            let mut change = StatusChange::new(
                *tenant_id,
                &module,
                Some(TenantModuleStatus::Upgrading),
                to,
                UPGRADE_ACTOR,
                action,
            );
            change.reason = reason.as_deref();
            change.set_version = set_version;
            tx.tenant_module_move(&change).await?;
        }
        if let Some(reason) = reason {
            // Every tenant is back where it was, committed with this step; the run ends
            // failed with the reason (not completed).
            ctx.fail_run(reason);
        }
        let mut output = input;
        output["outcome"] = outcome;
        Ok(output)
    })
}

const ARCHIVE_ACTOR: &str = "workflow:module_archive";

/// `archive.remove`: delete exactly the exported rows, then ARCHIVED, in one transaction.
fn archive_remove(mut ctx: StepContext<'_>) -> StepFuture<'_> {
    Box::pin(async move {
        let (tenant_id, module) = tenant_module_params(&ctx)?;
        let slug = Slug::parse(&module).map_err(|e| JobError::Fatal(e.to_string()))?;
        let input = ctx.input.clone();
        let files = input["files"]
            .as_object()
            .ok_or_else(|| JobError::Fatal("no export in the step input".into()))?;
        let seen = input["updated_at_us"]
            .as_i64()
            .and_then(chrono::DateTime::from_timestamp_micros)
            .ok_or_else(|| JobError::Fatal("no export time in the step input".into()))?;
        // No module that needs this one may be on by now (checked when the archive was asked
        // for, and again here: the module may have been on and off again meanwhile).
        let (dependants, read) = super::switch::dependants(ctx.store(), tenant_id, &slug).await?;
        crate::domain::status::check_no_dependants(&module, &dependants)
            .map_err(|rule| JobError::Fatal(rule.to_string()))?;
        let reason = match ctx.params["requested_by"].as_str() {
            Some(who) => format!("data exported, then removed (asked by {who})"),
            None => "data exported, then removed".to_string(),
        };
        let tx = ctx.tx().await?;
        // First the move, under the lock and only if nothing changed since the export (a
        // tenant that turned the module on and off again may have new rows): then exactly
        // the exported rows go.
        let record = json!({"archive": files});
        let mut change = StatusChange::new(
            tenant_id,
            &module,
            None,
            TenantModuleStatus::Archived,
            ARCHIVE_ACTOR,
            "module.archive",
        )
        .because(&reason);
        change.provisioning = Some(&record);
        change.unchanged_since = Some(seen);
        change.tenant_seen = Some(&read);
        tx.tenant_module_move(&change).await.map_err(|e| match e {
            StoreError::Domain(rule) => JobError::Fatal(rule.to_string()),
            other => other.into(),
        })?;
        for (name, file) in files {
            let table =
                ModuleTable::parse(&slug, name).map_err(|e| JobError::Fatal(e.to_string()))?;
            let rows = file["rows"].as_u64().unwrap_or(0);
            tx.module_rows_delete(&table, tenant_id, rows)
                .await
                .map_err(|e| match e {
                    StoreError::Conflict(why) => JobError::Fatal(why),
                    other => other.into(),
                })?;
        }
        Ok(input)
    })
}

/// `upgrade.abort` (compensation of `upgrade.begin`): a later step died, so every tenant the
/// upgrade took goes back where it was. A tenant that already moved on is left alone.
fn upgrade_abort(mut ctx: StepContext<'_>) -> StepFuture<'_> {
    Box::pin(async move {
        let input = ctx.input.clone();
        let module = param(&ctx, "module")?.to_string();
        let tenants: Vec<(TenantId, TenantModuleStatus)> =
            serde_json::from_value(input["tenants"].clone())
                .map_err(|e| JobError::Fatal(e.to_string()))?;
        let reason = format!(
            "upgrade to {} abandoned: a later step failed, or the run was cancelled",
            input["version"].as_str().unwrap_or("?")
        );
        let tx = ctx.tx().await?;
        for (tenant_id, before) in &tenants {
            let moved = tx
                .tenant_module_move(
                    &StatusChange::new(
                        *tenant_id,
                        &module,
                        Some(TenantModuleStatus::Upgrading),
                        *before,
                        UPGRADE_ACTOR,
                        "module.upgrade_aborted",
                    )
                    .because(&reason),
                )
                .await;
            match moved {
                Ok(_) | Err(StoreError::Domain(_)) => {}
                Err(other) => return Err(other.into()),
            }
        }
        Ok(json!({"restored": tenants.len()}))
    })
}

/// `module.await_approval`: the run of a pending (ALPHA) request waits here, holding no
/// worker, until the Master Admin approves it ([`super::Lifecycle::approve`] sends the
/// `approval` signal, which no API caller may send); a rejection or a withdrawal cancels the
/// run instead. Requests that need no approval pass at once. Each wake-up also reads the
/// request it serves, so a decision whose second write a crash lost still takes effect:
/// approved (PROVISIONING) without the signal, it goes on; rejected or withdrawn (not this
/// request any more) without its run cancelled, the run ends, and frees the tenant module's
/// concurrency key for the request made again.
fn await_approval(ctx: StepContext<'_>) -> StepFuture<'_> {
    Box::pin(async move {
        if ctx.params["approval"] != json!(true) {
            return Ok(json!({"approval": "not needed"}));
        }
        if let Some(signal) = ctx
            .store()
            .run_signal_get(ctx.run_id, super::APPROVAL_SIGNAL)
            .await?
        {
            return Ok(json!({
                "approved_by": signal.sent_by,
                "approved_at": signal.sent_at,
            }));
        }
        let (tenant_id, module) = tenant_module_params(&ctx)?;
        let run = ctx.store().run_get(ctx.run_id).await?;
        let request = ctx.store().tenant_module_get(tenant_id, &module).await?;
        let serves = |record: &TenantModuleRecord| {
            run.as_ref().is_some_and(|run| {
                crate::workflow::Engine::started_with_key(
                    run,
                    &super::request::provisioning_key(record),
                )
            })
        };
        match request {
            Some(record) if serves(&record) => match record.status {
                // The approval wakes it at once; this bounds a wake-up lost in a crash.
                TenantModuleStatus::PendingApproval => {
                    Err(JobError::snooze(std::time::Duration::from_secs(60)))
                }
                TenantModuleStatus::Provisioning => Ok(json!({
                    "approved_by": "(the approval's signal was lost: the request is PROVISIONING)",
                })),
                other => Err(JobError::Fatal(format!(
                    "the request is {other}: nothing to provision"
                ))),
            },
            _ => Err(JobError::Fatal(
                "the request this run waited for was rejected or withdrawn".into(),
            )),
        }
    })
}

/// Register the lifecycle step handlers.
pub fn register(steps: &mut StepRegistry, exports: SharedExports) {
    steps.register("module.await_approval", await_approval);
    steps.register("module.migrate", migrate);
    steps.register("module.enable", enable);
    steps.register("upgrade.begin", upgrade_begin);
    steps.register(
        "upgrade.backup",
        super::storage_circuit::guarded(exports, upgrade_backup),
    );
    steps.register("upgrade.apply", upgrade_apply);
    steps.register("upgrade.abort", upgrade_abort);
    steps.register("archive.remove", archive_remove);
}
