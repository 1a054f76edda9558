//! `restore-backup`: read a major upgrade's backup back from the export storage and put the
//! rows a module's tables lost back in.
//!
//! The backup (`upgrade.backup`) holds every tenant's rows of the version the upgrade left,
//! one JSON object per line, with each object's size, SHA-256 and row count in the run's
//! step output. A restore:
//! - is a Master Admin's, and only into the version that was backed up (after a rollback, or
//!   when the upgrade failed): rows of 1.0.0 are not forced into 2.0.0's columns;
//! - verifies every object (size, digest, row count) before it writes anything;
//! - inserts only the rows a table does not hold (matched by `(tenant_id, id)`): a row that is
//!   there, even changed since, is left as it is;
//! - never writes a frozen tenant's rows (DISABLED, SUSPENDED…): they are counted as skipped;
//! - is one transaction per table, audited once, and says when it restored nothing.

use super::{Lifecycle, LifecycleError, installed};
use crate::domain::DomainError;
use crate::domain::actor::{Actor, Authority};
use crate::domain::ident::{ModuleTable, Slug};
use crate::export::{DigestWriter, ExportError, ExportStorage, ObjectDigest};
use crate::store::StoreError;
use crate::store::domain::TenantId;
use crate::store::runs::RunId;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// Rows per insert statement.
const ROWS_PER_INSERT: usize = 500;

/// What a restore put back, per table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableRestored {
    pub table: String,
    /// Rows in the backup.
    pub rows: u64,
    /// Rows inserted (the table did not hold them).
    pub inserted: u64,
    /// Rows of tenants whose module is not in use (their data is frozen).
    pub frozen: u64,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Restored {
    pub module: String,
    pub version: String,
    pub tables: Vec<TableRestored>,
    /// Tenants whose rows were left out because their module is not in use.
    pub frozen_tenants: Vec<TenantId>,
}

impl Restored {
    /// Rows inserted over every table.
    pub fn inserted(&self) -> u64 {
        self.tables.iter().map(|t| t.inserted).sum()
    }
}

fn invalid(why: String) -> LifecycleError {
    LifecycleError::Store(StoreError::InvalidInput(why))
}

fn storage(e: ExportError) -> LifecycleError {
    match e {
        ExportError::NotFound(key) => invalid(format!("the backup object {key} is missing")),
        other => LifecycleError::Export(other),
    }
}

impl Lifecycle {
    /// Put back the rows of `module`'s tables that the backup of upgrade run `run` holds and
    /// the tables do not (see the module documentation).
    pub async fn restore_backup(
        &self,
        exports: &dyn ExportStorage,
        module: &str,
        run: RunId,
        actor: &Actor,
    ) -> Result<Restored, LifecycleError> {
        let slug = Slug::parse(module)?;
        if !matches!(actor.authority, Authority::MasterAdmin | Authority::System) {
            return Err(DomainError::NotPermitted {
                what: format!("restoring a backup of `{slug}`"),
                reason: "only a Master Admin does this".into(),
            }
            .into());
        }
        let record = self
            .store
            .run_get(run)
            .await?
            .ok_or_else(|| invalid(format!("no run {run}")))?;
        if record.workflow != super::UPGRADE_WORKFLOW || record.params["module"] != json!(module) {
            return Err(invalid(format!(
                "run {run} is not an upgrade of `{slug}` (it is a `{}` run)",
                record.workflow
            )));
        }
        let Some(output) = record
            .steps
            .iter()
            .filter_map(|s| s.output.as_ref())
            .find(|o| o["backup"]["tables"].is_object())
        else {
            return Err(LifecycleError::NothingDone(format!(
                "run {run} made no backup (only a major upgrade backs the tables up)"
            )));
        };
        let version = output["from_version"].as_str().unwrap_or("?").to_string();
        let versions = self.store.versions_of(slug.as_str()).await?;
        let at = installed(&versions).map(|v| v.version.clone());
        if at.as_deref() != Some(version.as_str()) {
            return Err(LifecycleError::Store(StoreError::Conflict(format!(
                "the backup is of `{slug}` {version} and its tables are at {}: roll the \
                 module back to {version} first",
                at.as_deref().unwrap_or("nothing (not installed)")
            ))));
        }
        let in_use: BTreeSet<TenantId> = self
            .store
            .module_tenants(slug.as_str())
            .await?
            .iter()
            .filter(|m| m.status.is_active())
            .map(|m| m.tenant_id)
            .collect();

        // Everything is read and verified before anything is written.
        let mut tables = Vec::new();
        for (name, file) in output["backup"]["tables"].as_object().into_iter().flatten() {
            let table = ModuleTable::parse(&slug, name)?;
            let key = file["key"].as_str().unwrap_or_default();
            let expected: ObjectDigest = serde_json::from_value(file["digest"].clone())
                .map_err(|e| invalid(format!("run {run}: backup of {name}: {e}")))?;
            let bytes = exports.read(key).await.map_err(storage)?;
            let mut measured = DigestWriter::default();
            measured.update(&bytes);
            if measured.finish() != expected {
                return Err(LifecycleError::Store(StoreError::Conflict(format!(
                    "the backup object {key} is not what the upgrade wrote (size or SHA-256 \
                     differ): nothing was restored"
                ))));
            }
            let rows = parse_rows(&bytes, key)?;
            if rows.len() as u64 != file["rows"].as_u64().unwrap_or(u64::MAX) {
                return Err(invalid(format!(
                    "{key}: {} rows read, the upgrade wrote {}",
                    rows.len(),
                    file["rows"]
                )));
            }
            tables.push((table, rows));
        }

        let mut frozen_tenants = BTreeSet::new();
        let mut done = Vec::new();
        for (table, rows) in tables {
            let total = rows.len() as u64;
            let (keep, frozen): (Vec<Value>, Vec<Value>) = rows.into_iter().partition(|row| {
                row["tenant_id"]
                    .as_i64()
                    .is_some_and(|t| in_use.contains(&t))
            });
            frozen_tenants.extend(frozen.iter().filter_map(|r| r["tenant_id"].as_i64()));
            let mut inserted = 0;
            for chunk in keep.chunks(ROWS_PER_INSERT) {
                inserted += self.store.module_rows_restore(&table, chunk).await?;
            }
            done.push(TableRestored {
                table: table.to_string(),
                rows: total,
                inserted,
                frozen: frozen.len() as u64,
            });
        }
        let restored = Restored {
            module: slug.to_string(),
            version,
            tables: done,
            frozen_tenants: frozen_tenants.into_iter().collect(),
        };
        self.store
            .audit_append(
                &actor.name,
                "module.backup_restored",
                None,
                Some(slug.as_str()),
                "tenant_modules",
                &json!({"run": run, "tables": restored.tables}),
            )
            .await?;
        if restored.inserted() == 0 {
            return Err(LifecycleError::NothingDone(format!(
                "nothing to restore: every row of run {run}'s backup of `{slug}` is in its \
                 tables{}",
                if restored.frozen_tenants.is_empty() {
                    String::new()
                } else {
                    format!(
                        " or belongs to a tenant whose module is not in use {:?}",
                        restored.frozen_tenants
                    )
                }
            )));
        }
        Ok(restored)
    }
}

/// The JSON objects of a backup object, one per line.
fn parse_rows(bytes: &[u8], key: &str) -> Result<Vec<Value>, LifecycleError> {
    let text = std::str::from_utf8(bytes).map_err(|e| invalid(format!("{key}: {e}")))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(n, line)| match serde_json::from_str::<Value>(line) {
            Ok(row) if row.is_object() => Ok(row),
            Ok(_) => Err(invalid(format!("{key}:{}: not a JSON object", n + 1))),
            Err(e) => Err(invalid(format!("{key}:{}: {e}", n + 1))),
        })
        .collect()
}
