//! PostgreSQL's own parts of the data store: a module table's columns, streaming its rows
//! out, and the monthly cost aggregation as one statement (the rest is `store/sql/data.rs`).

use crate::domain::ident::{ModuleTable, quote_ident};
use crate::store::StoreError;
use crate::store::StoreResult;
use crate::store::data::{CostAggregated, RowBatch, next_month, send_in_batches};
use crate::store::domain::TenantId;
use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgPool};

/// Module tables declare `created_at` as `TIMESTAMP` (UTC) or `TIMESTAMPTZ`; a UTC
/// `timestamp` parameter compares right with both.
fn cutoff(before: Option<DateTime<Utc>>) -> Option<chrono::NaiveDateTime> {
    before.map(|b| b.naive_utc())
}

/// See [`crate::store::sql::SqlStore::rows_export`].
pub(super) async fn rows_export(
    pool: &PgPool,
    table: &ModuleTable,
    columns: &[String],
    tenant: TenantId,
    before: Option<DateTime<Utc>>,
    out: tokio::sync::mpsc::Sender<RowBatch>,
) -> StoreResult<u64> {
    let values: Vec<String> = columns
        .iter()
        .map(|c| format!("{}::text", quote_ident(c)))
        .collect();
    let sql = format!(
        "SELECT ARRAY[{}] FROM {} WHERE tenant_id = $1 \
             AND ($2::timestamp IS NULL OR created_at < $2::timestamp)",
        values.join(", "),
        table.quoted()
    );
    let rows = sqlx::query_scalar::<_, Vec<Option<String>>>(&sql)
        .bind(tenant)
        .bind(cutoff(before))
        .fetch(pool);
    send_in_batches(rows.map_err(StoreError::from), out).await
}

/// See [`crate::store::sql::Conn::costs_aggregate`].
pub(super) async fn costs_aggregate(
    conn: &mut PgConnection,
    month: NaiveDate,
) -> StoreResult<CostAggregated> {
    let (from, to) = month_bounds(month);
    let row = sqlx::query(COST_AGGREGATE)
        .bind(month)
        .bind(from)
        .bind(to)
        .fetch_one(conn)
        .await?;
    Ok(CostAggregated {
        usage_rows: row.try_get(0)?,
        cost_rows: row.try_get(1)?,
    })
}

/// A month as the UTC instants it spans, `[from, to)`.
fn month_bounds(month: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = |d: NaiveDate| d.and_time(chrono::NaiveTime::MIN).and_utc();
    (start(month), start(next_month(month)))
}

/// One month recomputed in one statement: sums per (tenant, module), upserted where they
/// changed (an unchanged row keeps its `computed_at`), and rows whose logs are gone removed.
const COST_AGGREGATE: &str = r#"
WITH sums AS (
    SELECT tenant_id, module, count(*)::int8 AS calls, sum(tokens)::int8 AS tokens,
           sum(row_count)::int8 AS row_count, sum(estimated_cost) AS cost
    FROM module_usage_logs
    WHERE created_at >= $2 AND created_at < $3
    GROUP BY tenant_id, module
), upserted AS (
    INSERT INTO tenant_module_monthly_cost AS c
        (tenant_id, module, month, calls, tokens, row_count, cost)
    SELECT tenant_id, module, $1, calls, tokens, row_count, cost FROM sums
    ON CONFLICT (tenant_id, module, month) DO UPDATE
        SET calls = EXCLUDED.calls, tokens = EXCLUDED.tokens, row_count = EXCLUDED.row_count,
            cost = EXCLUDED.cost, computed_at = now()
        WHERE (c.calls, c.tokens, c.row_count, c.cost)
              IS DISTINCT FROM (EXCLUDED.calls, EXCLUDED.tokens, EXCLUDED.row_count, EXCLUDED.cost)
    RETURNING 1
), gone AS (
    DELETE FROM tenant_module_monthly_cost c
    WHERE c.month = $1
      AND NOT EXISTS (SELECT 1 FROM sums s WHERE s.tenant_id = c.tenant_id AND s.module = c.module)
    RETURNING 1
)
SELECT (SELECT coalesce(sum(calls), 0) FROM sums)::int8,
       (SELECT count(*) FROM sums)::int8,
       (SELECT count(*) FROM upserted) + (SELECT count(*) FROM gone)
"#;
