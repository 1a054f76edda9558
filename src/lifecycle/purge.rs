//! Purge-and-export (SPEC §4.2.3) and the archive's export, on the export storage.
//!
//! - `retention.schedule` (nightly, `workflows/data_retention.toml`): for every tenant module
//!   whose module keeps data `data_retention_days`, with rows older than that, starts a
//!   `module_purge` run (idempotency key `purge:<tenant>:<module>:<date>`: one per night).
//! - `purge.hold` (`workflows/module_purge.toml`): from now until the deletions, the tenant's
//!   expired rows are frozen (the module tables' guard refuses to write them: see
//!   [`crate::store::DataStore::purge_hold`]), so the rows exported are the rows deleted. It
//!   is placed once no transaction that wrote the tenant's rows is running (until then the
//!   step snoozes). A run that dies or is cancelled lifts it (`purge.release`, its
//!   compensation).
//! - `purge.export`: each table's expired rows as CSV to
//!   `tenant_exports/<tenant>/<module>/<table>/<date>.csv`, read back and verified. A retry
//!   writes the objects again from the same rows: nothing was deleted yet.
//! - `purge.delete`: only then, exactly those rows, in batches of [`PURGE_BATCH`] (each its own
//!   transaction). Before each table it checks that no more rows match than were exported
//!   (rows can only have gone, by an earlier attempt of this step), so a retried step goes on
//!   where it stopped and never deletes a row that is not in the export. Each batch deletes
//!   only while the run's hold is on (a cancel's `purge.release` waits for the batch, and the
//!   next one deletes nothing). Then it lifts the hold.
//! - `archive.export`: every row of the tenant's module, with the same export.

use super::steps::tenant_module_params;
use super::storage_circuit;
use crate::domain::ident::{ModuleTable, Slug};
use crate::domain::status::TenantModuleStatus;
use crate::export::csv_stream::{ExportFailure, ExportReport, export_rows};
use crate::export::{ExportError, SharedExports, object_key};
use crate::queue::JobError;
use crate::store::{SharedStore, StoreError};
use crate::workflow::{StepContext, StepFuture, StepRegistry};
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::json;

/// Rows deleted per transaction by `purge.delete`.
pub const PURGE_BATCH: u64 = 20_000;

/// How long `purge.hold` snoozes while a transaction that wrote the tenant's rows runs.
const HOLD_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

const ACTOR: &str = "workflow:module_purge";

impl From<ExportFailure> for JobError {
    fn from(e: ExportFailure) -> Self {
        match e {
            ExportFailure::Storage(ExportError::Invalid(why)) => JobError::Fatal(why),
            ExportFailure::Csv(why) => JobError::Fatal(why),
            ExportFailure::Store(e) => e.into(),
            other => JobError::Retryable(other.to_string()),
        }
    }
}

fn fatal(e: impl std::fmt::Display) -> JobError {
    JobError::Fatal(e.to_string())
}

/// The tables of a tenant's module version: those its version and every earlier one created.
pub(crate) async fn tenant_tables(
    store: &SharedStore,
    slug: &Slug,
    version_id: Option<i64>,
) -> Result<Vec<ModuleTable>, JobError> {
    let versions = store.versions_of(slug.as_str()).await?;
    let upto = versions
        .iter()
        .position(|v| Some(v.id) == version_id)
        .ok_or_else(|| JobError::Fatal(format!("`{slug}` has no version for this tenant")))?;
    versions[..=upto]
        .iter()
        .flat_map(|v| v.tables_created.iter())
        .map(|name| ModuleTable::parse(slug, name).map_err(fatal))
        .collect()
}

/// Report the bytes uploaded so far as the step's progress (best effort, off the hot path).
fn progress_reporter(ctx: &StepContext<'_>, table: &ModuleTable) -> impl Fn(u64) + Send + Sync {
    let progress = ctx.progress.clone();
    let table = table.to_string();
    move |bytes| {
        let (progress, table) = (progress.clone(), table.clone());
        tokio::spawn(async move {
            let _ = progress
                .report(json!({"table": table, "bytes_uploaded": bytes}))
                .await;
        });
    }
}

fn before_param(ctx: &StepContext<'_>) -> Result<DateTime<Utc>, JobError> {
    ctx.params["before"]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| JobError::Fatal("parameter before must be an RFC 3339 time".into()))
}

fn date_param(ctx: &StepContext<'_>) -> Result<NaiveDate, JobError> {
    ctx.params["date"]
        .as_str()
        .and_then(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
        .ok_or_else(|| JobError::Fatal("parameter date must be YYYY-MM-DD".into()))
}

/// `retention.schedule`: one `module_purge` run per tenant module with expired rows.
fn retention_schedule(mut ctx: StepContext<'_>) -> StepFuture<'_> {
    Box::pin(async move {
        let today = Utc::now().date_naive();
        let midnight = today.and_time(chrono::NaiveTime::MIN).and_utc();
        let (mut started, mut targets) = (0, 0);
        for target in ctx.store().retention_targets().await? {
            targets += 1;
            let slug = Slug::parse(&target.module).map_err(fatal)?;
            let before = midnight - chrono::Duration::days(i64::from(target.retention_days));
            let mut expired = 0;
            for table in tenant_tables(ctx.store(), &slug, Some(target.version_id)).await? {
                expired += ctx
                    .store()
                    .module_rows_count(&table, target.tenant_id, Some(before))
                    .await?;
            }
            if expired == 0 {
                continue;
            }
            let (_, new) = ctx
                .start_run(
                    "module_purge",
                    json!({"tenant_id": target.tenant_id, "module": target.module,
                           "before": before.to_rfc3339(), "date": today.to_string()}),
                    format!("purge:{}:{}:{today}", target.tenant_id, target.module),
                )
                .await?;
            started += usize::from(new);
        }
        Ok(json!({"targets": targets, "purges_started": started}))
    })
}

/// `purge.hold`: freeze the tenant's expired rows for this run, once no transaction that
/// wrote them is running (until then it snoozes: the wait counts no attempt).
fn purge_hold(ctx: StepContext<'_>) -> StepFuture<'_> {
    Box::pin(async move {
        let (tenant_id, module) = tenant_module_params(&ctx)?;
        let before = before_param(&ctx)?;
        let placed = ctx
            .store()
            .purge_hold(tenant_id, &module, before, ctx.run_id)
            .await?;
        if !placed {
            return Err(JobError::snooze(HOLD_RETRY));
        }
        // The input goes on to the next step.
        let mut output = ctx.input.clone();
        if !output.is_object() {
            output = json!({});
        }
        output["held_before"] = json!(before.to_rfc3339());
        Ok(output)
    })
}

/// `purge.release` (compensation of `purge.hold`): the run died or was cancelled before its
/// deletions ended: the tenant's rows are writable again.
fn purge_release(ctx: StepContext<'_>) -> StepFuture<'_> {
    Box::pin(async move {
        let (tenant_id, module) = tenant_module_params(&ctx)?;
        let released = ctx
            .store()
            .purge_release(tenant_id, &module, ctx.run_id)
            .await?;
        Ok(json!({"released": released}))
    })
}

/// `purge.export`: every table's expired rows of the tenant, exported and verified.
fn purge_export(ctx: StepContext<'_>, exports: SharedExports) -> StepFuture<'_> {
    Box::pin(async move {
        let (tenant_id, module) = tenant_module_params(&ctx)?;
        let slug = Slug::parse(&module).map_err(fatal)?;
        let (before, date) = (before_param(&ctx)?, date_param(&ctx)?);
        let current = ctx
            .store()
            .tenant_module_get(tenant_id, &module)
            .await?
            .ok_or_else(|| JobError::Fatal(format!("tenant {tenant_id} has no `{module}`")))?;
        let mut reports = Vec::new();
        for table in tenant_tables(ctx.store(), &slug, current.version_id).await? {
            if ctx
                .store()
                .module_rows_count(&table, tenant_id, Some(before))
                .await?
                == 0
            {
                continue;
            }
            let key = object_key(tenant_id, &slug, table.as_str(), date, None);
            let report = export_rows(
                ctx.store().as_ref(),
                exports.as_ref(),
                &table,
                tenant_id,
                Some(before),
                &key,
                &progress_reporter(&ctx, &table),
            )
            .await?;
            reports.push(json!({"table": table.as_str(), "export": report}));
        }
        Ok(
            json!({"before": before.to_rfc3339(), "storage": exports.location(),
                  "exports": reports}),
        )
    })
}

/// `purge.delete`: exactly the exported rows, in batches.
fn purge_delete(ctx: StepContext<'_>) -> StepFuture<'_> {
    Box::pin(async move {
        let (tenant_id, module) = tenant_module_params(&ctx)?;
        let slug = Slug::parse(&module).map_err(fatal)?;
        let before = before_param(&ctx)?;
        let input = ctx.input.clone();
        let exports = input["exports"]
            .as_array()
            .ok_or_else(|| JobError::Fatal("no exports in the step input".into()))?;
        let mut deleted_total = 0;
        for entry in exports {
            let table = ModuleTable::parse(&slug, entry["table"].as_str().unwrap_or_default())
                .map_err(fatal)?;
            let report: ExportReport =
                serde_json::from_value(entry["export"].clone()).map_err(fatal)?;
            let left = ctx
                .store()
                .module_rows_count(&table, tenant_id, Some(before))
                .await?;
            if left > report.rows {
                return Err(JobError::Fatal(format!(
                    "{table}: {left} rows of tenant {tenant_id} are older than {before} but \
                     {} were exported to {}: nothing more deleted (purge again to export them)",
                    report.rows, report.key
                )));
            }
            let mut deleted = 0;
            loop {
                // The hold gone (the run was cancelled meanwhile), nothing more goes.
                let batch = ctx
                    .store()
                    .module_rows_purge(
                        &table,
                        &module,
                        tenant_id,
                        Some(before),
                        Some(ctx.run_id),
                        PURGE_BATCH,
                    )
                    .await
                    .map_err(|err| match err {
                        StoreError::Stale(message) => JobError::Fatal(message),
                        other => other.into(),
                    })?;
                deleted += batch;
                if batch < PURGE_BATCH {
                    break;
                }
                let _ = ctx
                    .progress
                    .report(json!({"table": table.as_str(), "deleted": deleted}))
                    .await;
            }
            deleted_total += deleted;
            ctx.store()
                .audit_append(
                    ACTOR,
                    "data.purge",
                    Some(tenant_id),
                    Some(&module),
                    table.as_str(),
                    // Earlier attempts of this step deleted the rest of the export (a
                    // crash lost their audit): every exported row is gone now.
                    &json!({"before": before.to_rfc3339(), "export": report,
                            "deleted_now": deleted,
                            "deleted_earlier": report.rows.saturating_sub(left),
                            "run": ctx.run_id}),
                )
                .await?;
        }
        let released = ctx
            .store()
            .purge_release(tenant_id, &module, ctx.run_id)
            .await?;
        let mut output = input;
        output["deleted"] = json!(deleted_total);
        output["hold_released"] = json!(released);
        Ok(output)
    })
}

/// `archive.export`: every row of the tenant's module version, exported and verified (the
/// rows are frozen while the module is off, so the export is whole).
fn archive_export(ctx: StepContext<'_>, exports: SharedExports) -> StepFuture<'_> {
    Box::pin(async move {
        let (tenant_id, module) = tenant_module_params(&ctx)?;
        let slug = Slug::parse(&module).map_err(fatal)?;
        let current = ctx
            .store()
            .tenant_module_get(tenant_id, &module)
            .await?
            .ok_or_else(|| JobError::Fatal(format!("tenant {tenant_id} has no `{module}`")))?;
        if !matches!(
            current.status,
            TenantModuleStatus::Disabled | TenantModuleStatus::Suspended
        ) {
            return Err(JobError::Fatal(format!(
                "only a DISABLED or SUSPENDED module is archived; `{module}` is {}",
                current.status
            )));
        }
        let date = Utc::now().date_naive();
        let suffix = format!("archive-run{}", ctx.run_id);
        let mut files = serde_json::Map::new();
        for table in tenant_tables(ctx.store(), &slug, current.version_id).await? {
            let key = object_key(tenant_id, &slug, table.as_str(), date, Some(&suffix));
            let report = export_rows(
                ctx.store().as_ref(),
                exports.as_ref(),
                &table,
                tenant_id,
                None,
                &key,
                &progress_reporter(&ctx, &table),
            )
            .await?;
            files.insert(table.as_str().to_string(), json!(report));
        }
        Ok(
            json!({"files": files, "storage": exports.location(), "status": current.status,
                  "updated_at_us": current.updated_at.timestamp_micros()}),
        )
    })
}

/// Register the steps that write to the export storage.
pub fn register(steps: &mut StepRegistry, exports: SharedExports) {
    steps.register("retention.schedule", retention_schedule);
    steps.register("purge.hold", purge_hold);
    steps.register("purge.release", purge_release);
    steps.register("purge.delete", purge_delete);
    steps.register(
        "purge.export",
        storage_circuit::guarded(exports.clone(), purge_export),
    );
    steps.register(
        "archive.export",
        storage_circuit::guarded(exports, archive_export),
    );
}
