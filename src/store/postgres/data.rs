//! [`DataStore`] on PostgreSQL.

use crate::domain::ident::{ModuleTable, quote_ident};
use crate::store::data::{
    CostAggregated, CostFilter, DataStore, EXPORT_BATCH_ROWS, MonthlyCost, RetentionTarget,
    RowBatch, UsageEntry, WebhookTarget, next_month,
};
use crate::store::domain::TenantId;
use crate::store::postgres::PgStore;
use crate::store::{StoreError, StoreResult};
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use rust_decimal::Decimal;
use sqlx::Row;

/// Module tables declare `created_at` as `TIMESTAMP` (UTC) or `TIMESTAMPTZ`; a UTC
/// `timestamp` parameter compares right with both.
fn cutoff(before: Option<DateTime<Utc>>) -> Option<chrono::NaiveDateTime> {
    before.map(|b| b.naive_utc())
}

fn decimal(text: &str) -> StoreResult<Decimal> {
    text.parse::<Decimal>()
        .map(|d| d.normalize())
        .map_err(|e| StoreError::Corrupt(format!("amount `{text}`: {e}")))
}

#[async_trait]
impl DataStore for PgStore {
    async fn retention_targets(&self) -> StoreResult<Vec<RetentionTarget>> {
        let rows = sqlx::query(
            "SELECT tm.tenant_id, tm.module, m.data_retention_days, tm.version_id \
             FROM tenant_modules tm JOIN core_modules m ON m.slug = tm.module \
             WHERE m.data_retention_days IS NOT NULL AND tm.version_id IS NOT NULL \
               AND tm.status IN ('ENABLED', 'UP_TO_DATE', 'SUSPENDED', 'DISABLED', 'ERROR') \
             ORDER BY tm.module, tm.tenant_id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RetentionTarget {
                    tenant_id: r.try_get("tenant_id")?,
                    module: r.try_get("module")?,
                    retention_days: r.try_get("data_retention_days")?,
                    version_id: r.try_get("version_id")?,
                })
            })
            .collect()
    }

    async fn module_table_columns(&self, table: &ModuleTable) -> StoreResult<Vec<String>> {
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT attname::text FROM pg_attribute \
             WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped \
             ORDER BY attnum",
        )
        .bind(table.quoted())
        .fetch_all(self.pool())
        .await?;
        if columns.is_empty() {
            return Err(StoreError::InvalidInput(format!("no table {table}")));
        }
        Ok(columns)
    }

    async fn module_rows_export(
        &self,
        table: &ModuleTable,
        tenant: TenantId,
        before: Option<DateTime<Utc>>,
        out: tokio::sync::mpsc::Sender<RowBatch>,
    ) -> StoreResult<u64> {
        let columns = self.module_table_columns(table).await?;
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
        let mut rows = sqlx::query_scalar::<_, Vec<Option<String>>>(&sql)
            .bind(tenant)
            .bind(cutoff(before))
            .fetch(self.pool());
        let mut count = 0u64;
        let mut batch = Vec::with_capacity(EXPORT_BATCH_ROWS);
        let gone = || StoreError::InvalidInput("the export's writer stopped".into());
        while let Some(row) = rows.try_next().await? {
            batch.push(row);
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

    async fn module_rows_count(
        &self,
        table: &ModuleTable,
        tenant: TenantId,
        before: Option<DateTime<Utc>>,
    ) -> StoreResult<u64> {
        let count: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {} WHERE tenant_id = $1 \
             AND ($2::timestamp IS NULL OR created_at < $2::timestamp)",
            table.quoted()
        ))
        .bind(tenant)
        .bind(cutoff(before))
        .fetch_one(self.pool())
        .await?;
        Ok(count as u64)
    }

    async fn module_rows_purge(
        &self,
        table: &ModuleTable,
        tenant: TenantId,
        before: Option<DateTime<Utc>>,
        limit: u64,
    ) -> StoreResult<u64> {
        let mut tx = self.pool().begin().await?;
        // The rows are in the export: the row audit trigger skips them (see AUDIT_FUNCTION).
        sqlx::query("SELECT set_config('steward.purge', 'on', true)")
            .execute(&mut *tx)
            .await?;
        // `ctid = ANY(ARRAY(...))` is a TID scan: each batch costs its own rows only.
        let deleted = sqlx::query(&format!(
            "DELETE FROM {t} WHERE ctid = ANY(ARRAY( \
                 SELECT ctid FROM {t} WHERE tenant_id = $1 \
                 AND ($2::timestamp IS NULL OR created_at < $2::timestamp) LIMIT $3))",
            t = table.quoted()
        ))
        .bind(tenant)
        .bind(cutoff(before))
        .bind(limit as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(deleted)
    }

    async fn audit_append(
        &self,
        actor: &str,
        action: &str,
        tenant_id: Option<TenantId>,
        module: Option<&str>,
        entity: &str,
        after: &serde_json::Value,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO audit_logs (actor, action, tenant_id, module, entity, after) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(actor)
        .bind(action)
        .bind(tenant_id)
        .bind(module)
        .bind(entity)
        .bind(after)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn usage_record(&self, entries: &[UsageEntry]) -> StoreResult<u64> {
        for e in entries {
            crate::store::data::check_usage(e)?;
        }
        let inserted = sqlx::query(
            "INSERT INTO module_usage_logs \
                 (tenant_id, module, route, tokens, row_count, estimated_cost, latency_ms, created_at) \
             SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::int8[], $5::int8[], \
                                  $6::numeric[], $7::int4[], $8::timestamptz[])",
        )
        .bind(entries.iter().map(|e| e.tenant_id).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.module.clone()).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.route.clone()).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.tokens).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.row_count).collect::<Vec<_>>())
        .bind(
            entries
                .iter()
                .map(|e| e.estimated_cost.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(entries.iter().map(|e| e.latency_ms).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.at).collect::<Vec<_>>())
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(inserted)
    }

    async fn cost_aggregate(&self, month: NaiveDate) -> StoreResult<CostAggregated> {
        let (from, to) = month_bounds(month);
        let row = sqlx::query(COST_AGGREGATE)
            .bind(month)
            .bind(from)
            .bind(to)
            .fetch_one(self.pool())
            .await?;
        Ok(CostAggregated {
            usage_rows: row.try_get(0)?,
            cost_rows: row.try_get(1)?,
        })
    }

    async fn monthly_costs(&self, filter: &CostFilter) -> StoreResult<Vec<MonthlyCost>> {
        let rows = sqlx::query(
            "SELECT tenant_id, module, month, calls, tokens, row_count, cost::text AS cost \
             FROM tenant_module_monthly_cost WHERE ($1::date IS NULL OR month = $1) \
             AND ($2::bigint IS NULL OR tenant_id = $2) AND ($3::text IS NULL OR module = $3) \
             ORDER BY month, tenant_id, module",
        )
        .bind(filter.month)
        .bind(filter.tenant)
        .bind(filter.module.as_deref())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(MonthlyCost {
                    tenant_id: r.try_get("tenant_id")?,
                    module: r.try_get("module")?,
                    month: r.try_get("month")?,
                    calls: r.try_get("calls")?,
                    tokens: r.try_get("tokens")?,
                    row_count: r.try_get("row_count")?,
                    cost: decimal(r.try_get("cost")?)?,
                })
            })
            .collect()
    }

    async fn tenant_webhook(&self, tenant: TenantId) -> StoreResult<Option<WebhookTarget>> {
        let row: Option<(Option<String>, Option<String>)> =
            sqlx::query_as("SELECT webhook_url, webhook_secret FROM tenants WHERE id = $1")
                .bind(tenant)
                .fetch_optional(self.pool())
                .await?;
        Ok(match row {
            Some((Some(url), Some(secret))) => Some(WebhookTarget { url, secret }),
            _ => None,
        })
    }

    async fn tenant_set_webhook(
        &self,
        tenant: TenantId,
        target: Option<&WebhookTarget>,
    ) -> StoreResult<()> {
        let updated =
            sqlx::query("UPDATE tenants SET webhook_url = $2, webhook_secret = $3 WHERE id = $1")
                .bind(tenant)
                .bind(target.map(|t| t.url.as_str()))
                .bind(target.map(|t| t.secret.as_str()))
                .execute(self.pool())
                .await?
                .rows_affected();
        if updated == 0 {
            return Err(StoreError::InvalidInput(format!("no tenant {tenant}")));
        }
        Ok(())
    }
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
