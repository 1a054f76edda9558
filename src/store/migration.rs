//! What the two backends share when they bring a module's tables to a version: which
//! versions still have to run, the record of what was done, and how a failure reads.

use super::StoreError;
use super::domain::MigrationReport;
use crate::domain::ident::{ModuleTable, Slug};

/// One published version, as the migration needs it.
pub(super) struct VersionSql {
    pub id: i64,
    pub version: String,
    pub up_sql: String,
    pub tables: Vec<String>,
    pub migrated: bool,
}

/// A version whose `up_sql` still has to run, with its validated tables.
pub(super) struct Pending {
    pub id: i64,
    pub up_sql: String,
    pub tables: Vec<ModuleTable>,
}

/// Bringing a module's tables up to a target version: every earlier version not yet migrated
/// in this database runs first, in order (a fresh database gets 1.0 then 1.1 then …).
pub(super) struct MigrationPlan {
    pub module: String,
    pub version: String,
    /// Every table of the module through the target version.
    pub tables: Vec<ModuleTable>,
    pub pending: Vec<Pending>,
}

impl MigrationPlan {
    /// `versions` in version order.
    pub fn new(slug: &Slug, versions: Vec<VersionSql>, target: i64) -> Result<Self, StoreError> {
        let last = versions
            .iter()
            .position(|v| v.id == target)
            .ok_or_else(|| {
                StoreError::InvalidInput(format!("module `{slug}` has no version {target}"))
            })?;
        let mut plan = MigrationPlan {
            module: slug.to_string(),
            version: versions[last].version.clone(),
            tables: Vec::new(),
            pending: Vec::new(),
        };
        for version in versions.into_iter().take(last + 1) {
            let tables = version
                .tables
                .iter()
                .map(|t| ModuleTable::parse(slug, t))
                .collect::<Result<Vec<_>, _>>()?;
            plan.tables.extend(tables.iter().cloned());
            if !version.migrated {
                plan.pending.push(Pending {
                    id: version.id,
                    up_sql: version.up_sql,
                    tables,
                });
            }
        }
        Ok(plan)
    }

    /// The record of this plan (`created` is set by the caller once it ran).
    pub fn report(&self, row_level_security: bool, note: Option<String>) -> MigrationReport {
        MigrationReport {
            module: self.module.clone(),
            version: self.version.clone(),
            tables: self.tables.iter().map(|t| t.to_string()).collect(),
            created: false,
            row_level_security,
            grants: row_level_security,
            note,
        }
    }
}

/// A database error of the catalog's SQL is the migration's failure, with the database's
/// words; anything transient (a lost connection, a deadlock, a busy SQLite file) stays what
/// it is, to be retried.
pub(super) fn as_migration_error(err: StoreError) -> StoreError {
    if err.is_transient() {
        return err;
    }
    match err {
        StoreError::Database(sqlx::Error::Database(db)) => {
            StoreError::Migration(db.message().to_string())
        }
        other => other,
    }
}
