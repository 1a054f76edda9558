//! The storage of tenant data work: what module tables hold past their retention, streaming
//! those rows out and deleting them in batches (purge-and-export, archive), usage logs and
//! their monthly cost, and the tenants' webhook endpoints. Implemented in `postgres/data.rs`
//! and `sqlite/data.rs`; `tests/data.rs` runs against both.

use super::StoreResult;
use super::domain::TenantId;
use crate::domain::ident::ModuleTable;
use crate::types::runs::RunId;
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

/// Rows of a module table, every value as text (`None` for NULL), in column order.
pub type RowBatch = Vec<Vec<Option<String>>>;

/// Rows per [`RowBatch`] a store sends while exporting.
pub const EXPORT_BATCH_ROWS: usize = 2_000;

/// Send a stream of rows to an export's writer in batches of [`EXPORT_BATCH_ROWS`] (memory
/// stays flat); returns how many rows were sent.
pub(crate) async fn send_in_batches(
    rows: impl futures::Stream<Item = StoreResult<Vec<Option<String>>>>,
    out: tokio::sync::mpsc::Sender<RowBatch>,
) -> StoreResult<u64> {
    use futures::StreamExt;
    let mut rows = std::pin::pin!(rows);
    let mut count = 0u64;
    let mut batch = Vec::with_capacity(EXPORT_BATCH_ROWS);
    let gone = || super::StoreError::InvalidInput("the export's writer stopped".into());
    while let Some(row) = rows.next().await {
        batch.push(row?);
        count += 1;
        if batch.len() == EXPORT_BATCH_ROWS {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(EXPORT_BATCH_ROWS));
            out.send(full).await.map_err(|_| gone())?;
        }
    }
    if !batch.is_empty() {
        out.send(batch).await.map_err(|_| gone())?;
    }
    Ok(count)
}

pub use crate::types::data::{
    CostAggregated, CostFilter, MonthlyCost, RetentionTarget, UsageEntry, WebhookTarget,
    next_month, parse_month,
};

/// The storage of tenant data work.
#[async_trait]
pub trait DataStore: Send + Sync {
    /// Every tenant module holding data (not being provisioned, upgraded or archived) whose
    /// module sets `data_retention_days`.
    async fn retention_targets(&self) -> StoreResult<Vec<RetentionTarget>>;

    /// A module table's columns, in order.
    async fn module_table_columns(&self, table: &ModuleTable) -> StoreResult<Vec<String>>;

    /// Stream a tenant's rows of `table` (only those created before `before`, when given) into
    /// `out`, [`EXPORT_BATCH_ROWS`] at a time, values as text in
    /// [`DataStore::module_table_columns`] order. The channel's bound keeps memory flat: the
    /// store reads no faster than the receiver writes. Returns how many rows were sent.
    async fn module_rows_export(
        &self,
        table: &ModuleTable,
        tenant: TenantId,
        before: Option<DateTime<Utc>>,
        out: tokio::sync::mpsc::Sender<RowBatch>,
    ) -> StoreResult<u64>;

    /// How many of a tenant's rows of `table` were created before `before` (all, with `None`).
    async fn module_rows_count(
        &self,
        table: &ModuleTable,
        tenant: TenantId,
        before: Option<DateTime<Utc>>,
    ) -> StoreResult<u64>;

    /// Delete at most `limit` of those rows, in one transaction of its own, without a row
    /// audit each (the purge is audited once, by its caller: the rows are in the export).
    /// With `hold`, only while that run's purge hold is on the tenant module (its release
    /// waits for the batch), and only rows as they were when it was placed (see
    /// [`DataStore::purge_hold`]); the hold gone, [`super::StoreError::Stale`] and nothing deleted,
    /// unless nothing was left to delete. Returns how many went.
    async fn module_rows_purge(
        &self,
        table: &ModuleTable,
        module: &str,
        tenant: TenantId,
        before: Option<DateTime<Utc>>,
        hold: Option<RunId>,
        limit: u64,
    ) -> StoreResult<u64>;

    /// Hold a tenant's rows of `module` created before `before` for purge `run`: until
    /// [`DataStore::purge_release`], the module tables' guard refuses to insert, change or
    /// delete them (steward's own purge deletions pass), so the rows a purge exports are the
    /// rows it deletes. Placed only once no transaction that wrote the tenant's rows of the
    /// module is still running (it could have written what the export would not see):
    /// `false` when one is, and nothing was placed (try again). Replaces the tenant module's
    /// earlier hold of another run (purges of a tenant module run one at a time); a run's
    /// own hold stays as it was. Committed when it returns `true`.
    async fn purge_hold(
        &self,
        tenant: TenantId,
        module: &str,
        before: DateTime<Utc>,
        run: RunId,
    ) -> StoreResult<bool>;

    /// Lift the hold `run` placed on a tenant module; false when it holds none.
    async fn purge_release(&self, tenant: TenantId, module: &str, run: RunId) -> StoreResult<bool>;

    /// Insert those of `rows` (JSON objects keyed by column, as
    /// [`crate::store::DomainStore::module_table_dump`] writes them) that `table` does not
    /// hold yet (matched by `(tenant_id, id)`; a row already there stays as it is), in one
    /// transaction, through the table's triggers. Returns how many were inserted.
    async fn module_rows_restore(
        &self,
        table: &ModuleTable,
        rows: &[serde_json::Value],
    ) -> StoreResult<u64>;

    /// Append one audit row.
    async fn audit_append(
        &self,
        actor: &str,
        action: &str,
        tenant_id: Option<TenantId>,
        module: Option<&str>,
        entity: &str,
        after: &serde_json::Value,
    ) -> StoreResult<()>;

    /// Record usage log entries.
    async fn usage_record(&self, entries: &[UsageEntry]) -> StoreResult<u64>;

    /// Recompute `month` (its first day) from the usage logs: every (tenant, module) row of the
    /// month replaced in one transaction, so a re-run, or a run after late logs arrived,
    /// gives exactly the rows a first run over the same logs gives. Sums are exact.
    async fn cost_aggregate(&self, month: NaiveDate) -> StoreResult<CostAggregated>;

    /// The monthly cost rows the filter selects, by month, tenant and module.
    async fn monthly_costs(&self, filter: &CostFilter) -> StoreResult<Vec<MonthlyCost>>;

    /// A tenant's webhook endpoint and secret, when it has both.
    async fn tenant_webhook(&self, tenant: TenantId) -> StoreResult<Option<WebhookTarget>>;

    /// Set (or clear, with `None`) a tenant's webhook endpoint and secret.
    async fn tenant_set_webhook(
        &self,
        tenant: TenantId,
        target: Option<&WebhookTarget>,
    ) -> StoreResult<()>;

    /// Replace a tenant's webhook secret `read` (stored in the clear) by `sealed`, only if it
    /// is still `read`: false when the endpoint was replaced meanwhile (left as it is).
    async fn tenant_webhook_reseal(
        &self,
        tenant: TenantId,
        read: &str,
        sealed: &str,
    ) -> StoreResult<bool>;
}

/// The most tokens, rows or latency (ms) one usage entry records.
pub const USAGE_COUNT_MAX: i64 = 1_000_000_000;

/// The highest cost one usage entry records. With [`USAGE_COUNT_MAX`], a month's sums of a
/// tenant module stay far inside their columns: PostgreSQL's `NUMERIC(28,6)`, SQLite's
/// 64-bit sums of micro-units (over 900 million maximal entries in one month).
pub const USAGE_COST_MAX: i64 = 10_000;

/// Refuse a usage entry the cost tables could not hold exactly, the one home of that rule
/// (the API reports it per entry, and also refuses a time in the future): an invalid module
/// slug or route; a negative, over-precise or too large cost; negative or too large counts.
pub fn check_usage(entry: &UsageEntry) -> StoreResult<()> {
    let refuse = |why: String| Err(super::StoreError::InvalidInput(why));
    crate::domain::ident::Slug::parse(&entry.module)?;
    if entry.route.is_empty() || entry.route.chars().count() > 500 || entry.route.contains('\0') {
        return refuse("route must be 1 to 500 characters, without NUL".into());
    }
    let cost = entry.estimated_cost;
    if cost.is_sign_negative()
        || cost.normalize().scale() > 6
        || cost > rust_decimal::Decimal::from(USAGE_COST_MAX)
    {
        return refuse(format!(
            "estimated_cost {cost} must be 0 to {USAGE_COST_MAX}, with at most 6 decimal places"
        ));
    }
    let counts = [entry.tokens, entry.row_count, i64::from(entry.latency_ms)];
    if counts.iter().any(|n| !(0..=USAGE_COUNT_MAX).contains(n)) {
        return refuse(format!(
            "tokens, row_count and latency_ms must be 0 to {USAGE_COUNT_MAX}"
        ));
    }
    Ok(())
}
