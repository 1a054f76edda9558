//! [`DataStore`] on SQLite. Times of steward's own tables are milliseconds since the epoch;
//! module tables keep `created_at` as SQLite's `CURRENT_TIMESTAMP` text (UTC). Costs are
//! decimal text, summed exactly as integer millionths.

use crate::domain::ident::{ModuleTable, quote_ident};
use crate::store::data::{
    CostAggregated, CostFilter, DataStore, EXPORT_BATCH_ROWS, MonthlyCost, RetentionTarget,
    RowBatch, UsageEntry, WebhookTarget, next_month,
};
use crate::store::domain::TenantId;
use crate::store::sqlite::SqliteStore;
use crate::store::{StoreError, StoreResult};
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use rust_decimal::Decimal;
use sqlx::Row;

/// `created_at < ?` against SQLite's `CURRENT_TIMESTAMP` text form.
fn cutoff(before: Option<DateTime<Utc>>) -> Option<String> {
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

#[async_trait]
impl DataStore for SqliteStore {
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
        let columns: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
                .bind(table.as_str())
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
            .map(|c| format!("CAST({} AS TEXT)", quote_ident(c)))
            .collect();
        let sql = format!(
            "SELECT {} FROM {} WHERE tenant_id = ?1 AND (?2 IS NULL OR created_at < ?2)",
            values.join(", "),
            table.quoted()
        );
        let mut rows = sqlx::query(&sql)
            .bind(tenant)
            .bind(cutoff(before))
            .fetch(self.pool());
        let mut count = 0u64;
        let mut batch = Vec::with_capacity(EXPORT_BATCH_ROWS);
        let gone = || StoreError::InvalidInput("the export's writer stopped".into());
        while let Some(row) = rows.try_next().await? {
            let values = (0..columns.len())
                .map(|i| row.try_get::<Option<String>, _>(i))
                .collect::<Result<Vec<_>, _>>()?;
            batch.push(values);
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
            "SELECT count(*) FROM {} WHERE tenant_id = ?1 AND (?2 IS NULL OR created_at < ?2)",
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
        let _guard = self.write_lock.lock().await;
        let mut tx = self.pool().begin().await?;
        // The rows are in the export: the row audit trigger skips deletions while this
        // transaction's marker row exists (SQLite has one writer: no one else sees it).
        sqlx::query("INSERT INTO steward_purging (marker) VALUES (1)")
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query(&format!(
            "DELETE FROM {t} WHERE rowid IN (SELECT rowid FROM {t} WHERE tenant_id = ?1 \
             AND (?2 IS NULL OR created_at < ?2) LIMIT ?3)",
            t = table.quoted()
        ))
        .bind(tenant)
        .bind(cutoff(before))
        .bind(limit as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM steward_purging")
            .execute(&mut *tx)
            .await?;
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
        let _guard = self.write_lock.lock().await;
        sqlx::query(
            "INSERT INTO audit_logs (actor, action, tenant_id, module, entity, after) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(actor)
        .bind(action)
        .bind(tenant_id)
        .bind(module)
        .bind(entity)
        .bind(after.to_string())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn usage_record(&self, entries: &[UsageEntry]) -> StoreResult<u64> {
        let _guard = self.write_lock.lock().await;
        for e in entries {
            crate::store::data::check_usage(e)?;
        }
        let mut tx = self.pool().begin().await?;
        for e in entries {
            sqlx::query(
                "INSERT INTO module_usage_logs \
                 (tenant_id, module, route, tokens, row_count, estimated_cost, latency_ms, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .bind(e.tenant_id)
            .bind(&e.module)
            .bind(&e.route)
            .bind(e.tokens)
            .bind(e.row_count)
            .bind(e.estimated_cost.normalize().to_string())
            .bind(e.latency_ms)
            .bind(ms(e.at))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(entries.len() as u64)
    }

    async fn cost_aggregate(&self, month: NaiveDate) -> StoreResult<CostAggregated> {
        let _guard = self.write_lock.lock().await;
        let start = |d: NaiveDate| d.and_time(chrono::NaiveTime::MIN).and_utc();
        let (from, to) = (ms(start(month)), ms(start(next_month(month))));
        let month_text = month.format("%Y-%m-%d").to_string();
        let mut tx = self.pool().begin().await?;
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
        .execute(&mut *tx)
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
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "SELECT coalesce(sum(calls), 0), count(*) FROM tenant_module_monthly_cost \
             WHERE month = ?1",
        )
        .bind(&month_text)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(CostAggregated {
            usage_rows: row.try_get(0)?,
            cost_rows: row.try_get(1)?,
        })
    }

    async fn monthly_costs(&self, filter: &CostFilter) -> StoreResult<Vec<MonthlyCost>> {
        let rows = sqlx::query(
            "SELECT tenant_id, module, month, calls, tokens, row_count, cost \
             FROM tenant_module_monthly_cost WHERE (?1 IS NULL OR month = ?1) \
             AND (?2 IS NULL OR tenant_id = ?2) AND (?3 IS NULL OR module = ?3) \
             ORDER BY month, tenant_id, module",
        )
        .bind(filter.month.map(|m| m.format("%Y-%m-%d").to_string()))
        .bind(filter.tenant)
        .bind(filter.module.as_deref())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let month: String = r.try_get("month")?;
                let cost: String = r.try_get("cost")?;
                Ok(MonthlyCost {
                    tenant_id: r.try_get("tenant_id")?,
                    module: r.try_get("module")?,
                    month: NaiveDate::parse_from_str(&month, "%Y-%m-%d")
                        .map_err(|e| StoreError::Corrupt(format!("month `{month}`: {e}")))?,
                    calls: r.try_get("calls")?,
                    tokens: r.try_get("tokens")?,
                    row_count: r.try_get("row_count")?,
                    cost: cost
                        .parse::<Decimal>()
                        .map(|d| d.normalize())
                        .map_err(|e| StoreError::Corrupt(format!("amount `{cost}`: {e}")))?,
                })
            })
            .collect()
    }

    async fn tenant_webhook(&self, tenant: TenantId) -> StoreResult<Option<WebhookTarget>> {
        let row: Option<(Option<String>, Option<String>)> =
            sqlx::query_as("SELECT webhook_url, webhook_secret FROM tenants WHERE id = ?1")
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
        let _guard = self.write_lock.lock().await;
        let updated =
            sqlx::query("UPDATE tenants SET webhook_url = ?2, webhook_secret = ?3 WHERE id = ?1")
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
