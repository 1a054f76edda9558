//! SQLite's own parts of the data store: a module table's columns, streaming its rows out,
//! and the monthly cost aggregation, costs summed exactly as integer millionths (the rest is
//! `store/sql/data.rs`). Module tables keep `created_at` as `CURRENT_TIMESTAMP` text (UTC).

use crate::domain::ident::{ModuleTable, quote_ident};
use crate::store::data::{CostAggregated, RowBatch, next_month, send_in_batches};
use crate::store::domain::TenantId;
use crate::store::{StoreError, StoreResult};
use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnection, SqlitePool};

/// `created_at < ?` against SQLite's `CURRENT_TIMESTAMP` text form.
pub(super) fn cutoff(before: Option<DateTime<Utc>>) -> Option<String> {
    before.map(|b| b.format("%Y-%m-%d %H:%M:%S").to_string())
}

fn ms(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

/// An exact decimal text (`12.5`, `3`) as integer millionths, in SQL (costs are checked to
/// be non-negative with at most 6 decimal places when recorded).
const MICROS: &str = "CASE WHEN instr(estimated_cost, '.') = 0 \
    THEN CAST(estimated_cost AS INTEGER) * 1000000 \
    ELSE CAST(substr(estimated_cost, 1, instr(estimated_cost, '.') - 1) AS INTEGER) * 1000000 \
       + CAST(substr(substr(estimated_cost, instr(estimated_cost, '.') + 1) || '000000', 1, 6) AS INTEGER) END";

/// See [`crate::store::sql::SqlStore::rows_export`].
pub(super) async fn rows_export(
    pool: &SqlitePool,
    table: &ModuleTable,
    columns: &[String],
    tenant: TenantId,
    before: Option<DateTime<Utc>>,
    out: tokio::sync::mpsc::Sender<RowBatch>,
) -> StoreResult<u64> {
    let values: Vec<String> = columns
        .iter()
        .map(|c| format!("CAST({} AS TEXT)", quote_ident(c)))
        .collect();
    let sql = format!(
        "SELECT {} FROM {} WHERE tenant_id = ?1 AND (?2 IS NULL OR created_at < ?2)",
        values.join(", "),
        table.quoted()
    );
    let rows = sqlx::query(&sql)
        .bind(tenant)
        .bind(cutoff(before))
        .fetch(pool);
    let width = columns.len();
    let rows = rows.map_err(StoreError::from).and_then(|row| async move {
        (0..width)
            .map(|i| {
                row.try_get::<Option<String>, _>(i)
                    .map_err(StoreError::from)
            })
            .collect::<StoreResult<Vec<_>>>()
    });
    send_in_batches(rows, out).await
}

/// See [`crate::store::sql::Conn::costs_aggregate`].
pub(super) async fn costs_aggregate(
    conn: &mut SqliteConnection,
    month: NaiveDate,
) -> StoreResult<CostAggregated> {
    let start = |d: NaiveDate| d.and_time(chrono::NaiveTime::MIN).and_utc();
    let (from, to) = (ms(start(month)), ms(start(next_month(month))));
    let month_text = month.format("%Y-%m-%d").to_string();
    let sums = format!(
        "SELECT tenant_id, module, count(*) AS calls, sum(tokens) AS tokens, \
                sum(row_count) AS row_count, sum({MICROS}) AS micros \
         FROM module_usage_logs WHERE created_at >= ?2 AND created_at < ?3 \
         GROUP BY tenant_id, module"
    );
    sqlx::query(&format!(
        "INSERT INTO tenant_module_monthly_cost \
             (tenant_id, module, month, calls, tokens, row_count, cost) \
         SELECT tenant_id, module, ?1, calls, tokens, row_count, \
                (micros / 1000000) || '.' || substr('000000' || (micros % 1000000), -6) \
         FROM ({sums}) WHERE true \
         ON CONFLICT (tenant_id, module, month) DO UPDATE \
             SET calls = excluded.calls, tokens = excluded.tokens, \
                 row_count = excluded.row_count, cost = excluded.cost, \
                 computed_at = CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) \
             WHERE calls IS NOT excluded.calls OR tokens IS NOT excluded.tokens \
                OR row_count IS NOT excluded.row_count OR cost IS NOT excluded.cost"
    ))
    .bind(&month_text)
    .bind(from)
    .bind(to)
    .execute(&mut *conn)
    .await?;
    sqlx::query(&format!(
        "DELETE FROM tenant_module_monthly_cost WHERE month = ?1 \
         AND NOT EXISTS (SELECT 1 FROM ({sums}) s \
                         WHERE s.tenant_id = tenant_module_monthly_cost.tenant_id \
                           AND s.module = tenant_module_monthly_cost.module)"
    ))
    .bind(&month_text)
    .bind(from)
    .bind(to)
    .execute(&mut *conn)
    .await?;
    let row = sqlx::query(
        "SELECT coalesce(sum(calls), 0), count(*) FROM tenant_module_monthly_cost \
         WHERE month = ?1",
    )
    .bind(&month_text)
    .fetch_one(&mut *conn)
    .await?;
    Ok(CostAggregated {
        usage_rows: row.try_get(0)?,
        cost_rows: row.try_get(1)?,
    })
}
