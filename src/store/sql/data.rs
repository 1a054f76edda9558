//! [`DataStore`] written once, for every [`SqlStore`]: retention targets, row counts and
//! purges of module tables, usage logs, monthly costs and webhook endpoints. Streaming an
//! export, listing a table's columns and the monthly cost aggregation are each backend's own
//! (`SqlStore::rows_export`, `Conn::costs_aggregate`).

use crate::domain::ident::{ModuleTable, check_setting_key, quote_ident};
use crate::store::data::{
    CostAggregated, CostFilter, DataStore, MonthlyCost, RetentionTarget, RowBatch, UsageEntry,
    WebhookTarget, check_usage,
};
use crate::store::domain::TenantId;
use crate::store::sql::{Arg, Conn, Dialect, Sql, SqlStore, corrupt, sql};
use crate::store::{StoreError, StoreResult};
use crate::types::runs::RunId;
use async_trait::async_trait;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use rust_decimal::Decimal;

/// Usage rows per insert statement (8 values each, well under both databases' limits).
const USAGE_ROWS_PER_INSERT: usize = 1_000;

/// The columns of table `name` (in this schema), in order; none when it does not exist. (The
/// name is bound, never spliced.)
pub(crate) async fn table_columns(conn: &mut dyn Conn, name: &str) -> StoreResult<Vec<String>> {
    let (text, name) = conn.dialect().pick2(
        (
            "SELECT attname::text AS name FROM pg_attribute \
             WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped \
             ORDER BY attnum",
            quote_ident(name),
        ),
        (
            "SELECT name FROM pragma_table_info($1) ORDER BY cid",
            name.to_string(),
        ),
    );
    conn.fetch_all(sql!(text, name))
        .await?
        .iter()
        .map(|row| row.text("name"))
        .collect()
}

/// PostgreSQL's advisory lock of a tenant module (`module` and `tenant`: SQL expressions),
/// which the module tables' guard takes shared for every write it passes and a purge hold
/// takes alone (see migration 0024): the schema and module, and the tenant, as two integers
/// (cheap for the guard to compute on every row). Two tenant modules that share a key (a hash
/// collision) only make a hold wait for the other's writers.
pub(crate) fn purge_lock(module: &str, tenant: &str) -> String {
    format!("hashtext(current_schema() || '.' || {module}), ({tenant} % 2147483647)::int4")
}

/// How many of `tenant`'s rows `table` holds (created before `before`, when given).
async fn rows_count(
    conn: &mut dyn Conn,
    table: &ModuleTable,
    tenant: TenantId,
    before: Option<DateTime<Utc>>,
) -> StoreResult<u64> {
    let sql = sql!(
        format!(
            "SELECT count(*) AS n FROM {} WHERE tenant_id = $1 \
             AND ($2 IS NULL OR created_at < $2)",
            table.quoted()
        ),
        tenant,
        Arg::RowTime(before)
    );
    let count = conn.fetch_one(sql).await?.int("n")?;
    Ok(u64::try_from(count).unwrap_or(0))
}

#[async_trait]
impl<S: SqlStore> DataStore for S {
    async fn retention_targets(&self) -> StoreResult<Vec<RetentionTarget>> {
        self.read()
            .await?
            .fetch_all(sql!(
                "SELECT tm.tenant_id, tm.module, m.data_retention_days, tm.version_id \
                 FROM tenant_modules tm JOIN core_modules m ON m.slug = tm.module \
                 WHERE m.data_retention_days IS NOT NULL AND tm.version_id IS NOT NULL \
                   AND tm.status IN ('ENABLED', 'UP_TO_DATE', 'SUSPENDED', 'DISABLED', 'ERROR') \
                 ORDER BY tm.module, tm.tenant_id"
            ))
            .await?
            .iter()
            .map(|r| {
                Ok(RetentionTarget {
                    tenant_id: r.int("tenant_id")?,
                    module: r.text("module")?,
                    retention_days: r.int32("data_retention_days")?,
                    version_id: r.int("version_id")?,
                })
            })
            .collect()
    }

    async fn module_table_columns(&self, table: &ModuleTable) -> StoreResult<Vec<String>> {
        let columns = table_columns(&mut *self.read().await?, table.as_str()).await?;
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
        self.rows_export(table, &columns, tenant, before, out).await
    }

    async fn module_rows_count(
        &self,
        table: &ModuleTable,
        tenant: TenantId,
        before: Option<DateTime<Utc>>,
    ) -> StoreResult<u64> {
        rows_count(&mut *self.read().await?, table, tenant, before).await
    }

    async fn module_rows_purge(
        &self,
        table: &ModuleTable,
        module: &str,
        tenant: TenantId,
        before: Option<DateTime<Utc>>,
        hold: Option<RunId>,
        limit: u64,
    ) -> StoreResult<u64> {
        let mut tx = self.write().await?;
        // Under `hold`, the hold is read and kept (PostgreSQL: the row locked shared, so its
        // release waits for this batch; SQLite's write transaction keeps it anyway). Only row
        // versions written before the hold go (`xmin` older than its transaction): a writer
        // whose snapshot began before the hold did not see it, and what it wrote stays.
        let mut xid_bound = String::new();
        if let Some(run) = hold {
            let lock = tx.dialect().pick("FOR SHARE", "");
            let held = tx
                .fetch_optional(sql!(
                    format!(
                        "SELECT purge_xid FROM tenant_modules \
                         WHERE tenant_id = $1 AND module = $2 AND purge_run = $3 {lock}"
                    ),
                    tenant,
                    module,
                    run
                ))
                .await?;
            match held {
                Some(row) => {
                    if let (Dialect::Postgres, Some(xid)) =
                        (tx.dialect(), row.opt_int("purge_xid")?)
                    {
                        xid_bound =
                            format!("AND age(xmin) >= age(({xid} % 4294967296)::text::xid)");
                    }
                }
                // The hold was lifted (the run was cancelled or died): a row edited since
                // could be deleted unexported. Nothing to delete is still nothing to do.
                None => {
                    let left = rows_count(&mut *tx, table, tenant, before).await?;
                    if left > 0 {
                        return Err(StoreError::Stale(format!(
                            "run {run} no longer holds tenant {tenant}'s rows of `{module}`: \
                             {left} rows of {table} not deleted"
                        )));
                    }
                    return Ok(0);
                }
            }
        }
        // The rows are in the export: the row audit trigger skips them.
        tx.privilege("purge", true).await?;
        // PostgreSQL: `ctid = ANY(ARRAY(...))` is a TID scan, each batch costs its own rows.
        let sql = match tx.dialect() {
            Dialect::Postgres => sql!(
                "DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} WHERE tenant_id = $1 \
                     AND ($2::timestamp IS NULL OR created_at < $2::timestamp) {xid} LIMIT $3))"
                    .replace("{t}", &table.quoted())
                    .replace("{xid}", &xid_bound),
                tenant,
                Arg::RowTime(before),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ),
            Dialect::Sqlite => sql!(
                "DELETE FROM {t} WHERE rowid IN (SELECT rowid FROM {t} WHERE tenant_id = $1 \
                     AND ($2 IS NULL OR created_at < $2) LIMIT $3)"
                    .replace("{t}", &table.quoted()),
                tenant,
                Arg::RowTime(before),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ),
        };
        let deleted = tx.execute(sql).await?;
        tx.privilege("purge", false).await?;
        tx.commit().await?;
        Ok(deleted)
    }

    async fn purge_hold(
        &self,
        tenant: TenantId,
        module: &str,
        before: DateTime<Utc>,
        run: RunId,
    ) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        // PostgreSQL: the tenant module's lock alone, without waiting (writers take it shared
        // until they end, see migration 0024). SQLite: this write transaction already waited
        // for every other writer.
        if tx.dialect() == Dialect::Postgres {
            let lock = sql!(
                format!(
                    "SELECT pg_try_advisory_xact_lock({}) AS placed",
                    purge_lock("$1", "$2")
                ),
                module,
                tenant
            );
            if !tx.fetch_one(lock).await?.flag("placed")? {
                return Ok(false);
            }
        }
        // A run placing its hold again (a snoozed step) keeps the first.
        let xid = tx.dialect().pick("txid_current()", "0");
        let held = tx
            .execute(sql!(
                format!(
                    "UPDATE tenant_modules SET \
                         purge_before = CASE WHEN purge_run = $3 THEN purge_before ELSE $4 END, \
                         purge_xid = CASE WHEN purge_run = $3 THEN purge_xid ELSE {xid} END, \
                         purge_run = $3 \
                     WHERE tenant_id = $1 AND module = $2"
                ),
                tenant,
                module,
                run,
                Arg::RowTime(Some(before))
            ))
            .await?;
        if held != 1 {
            return Err(StoreError::InvalidInput(format!(
                "tenant {tenant} has no module `{module}` to hold"
            )));
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn purge_release(&self, tenant: TenantId, module: &str, run: RunId) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let released = tx
            .execute(sql!(
                "UPDATE tenant_modules SET purge_before = NULL, purge_run = NULL, purge_xid = NULL \
                 WHERE tenant_id = $1 AND module = $2 AND purge_run = $3",
                tenant,
                module,
                run
            ))
            .await?;
        tx.commit().await?;
        Ok(released == 1)
    }

    async fn module_rows_restore(
        &self,
        table: &ModuleTable,
        rows: &[serde_json::Value],
    ) -> StoreResult<u64> {
        let columns = self.module_table_columns(table).await?;
        for column in &columns {
            check_setting_key(column)?;
        }
        let names: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
        let mut tx = self.write().await?;
        // PostgreSQL types each value by its column; SQLite takes them as JSON gives them. A
        // row is there when its (tenant_id, id) is, whatever constraints the table declares.
        let (values, from, key) = match tx.dialect() {
            Dialect::Postgres => (
                names.iter().map(|n| format!("r.{n}")).collect::<Vec<_>>(),
                format!(
                    "jsonb_populate_recordset(NULL::{}, $1::jsonb) r",
                    table.quoted()
                ),
                ("r.tenant_id".to_string(), "r.id".to_string()),
            ),
            Dialect::Sqlite => (
                columns
                    .iter()
                    .map(|c| format!("json_extract(r.value, '$.\"{c}\"')"))
                    .collect(),
                "json_each($1) r".to_string(),
                (
                    "json_extract(r.value, '$.tenant_id')".to_string(),
                    "json_extract(r.value, '$.id')".to_string(),
                ),
            ),
        };
        let sql = sql!(
            format!(
                "INSERT INTO {t} ({}) SELECT {} FROM {from} WHERE NOT EXISTS \
                 (SELECT 1 FROM {t} x WHERE x.tenant_id = {} AND x.id = {}) \
                 ON CONFLICT DO NOTHING",
                names.join(", "),
                values.join(", "),
                key.0,
                key.1,
                t = table.quoted(),
            ),
            Arg::Json(Some(serde_json::Value::Array(rows.to_vec())))
        );
        let inserted = tx.execute(sql).await?;
        tx.commit().await?;
        Ok(inserted)
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
        let mut tx = self.write().await?;
        crate::store::sql::domain::Audit {
            actor,
            action,
            tenant_id,
            module,
            entity,
            before: None,
            after: Some(after.clone()),
        }
        .write(&mut *tx)
        .await?;
        tx.commit().await
    }

    async fn usage_record(&self, entries: &[UsageEntry]) -> StoreResult<u64> {
        for entry in entries {
            check_usage(entry)?;
        }
        let mut tx = self.write().await?;
        let mut inserted = 0;
        for chunk in entries.chunks(USAGE_ROWS_PER_INSERT) {
            let mut args = Vec::with_capacity(chunk.len() * 8);
            let rows: Vec<String> = chunk
                .iter()
                .map(|e| {
                    let n = args.len();
                    args.extend([
                        Arg::from(e.tenant_id),
                        Arg::from(&e.module),
                        Arg::from(&e.route),
                        Arg::from(e.tokens),
                        Arg::from(e.row_count),
                        Arg::from(e.estimated_cost.normalize().to_string()),
                        Arg::from(e.latency_ms),
                        Arg::from(e.at),
                    ]);
                    format!(
                        "(${}, ${}, ${}, ${}, ${}, CAST(${} AS {{decimal}}), ${}, ${})",
                        n + 1,
                        n + 2,
                        n + 3,
                        n + 4,
                        n + 5,
                        n + 6,
                        n + 7,
                        n + 8
                    )
                })
                .collect();
            let text = format!(
                "INSERT INTO module_usage_logs (tenant_id, module, route, tokens, row_count, \
                     estimated_cost, latency_ms, created_at) VALUES {}",
                rows.join(", ")
            );
            inserted += tx
                .execute(Sql {
                    text: text.into(),
                    args,
                })
                .await?;
        }
        tx.commit().await?;
        Ok(inserted)
    }

    async fn cost_aggregate(&self, month: NaiveDate) -> StoreResult<CostAggregated> {
        let mut tx = self.write().await?;
        // One aggregation of a month at a time (SQLite: the write lock), so that the last to
        // write read the latest logs: its statement reads what was committed once it holds
        // the lock.
        let month_key = month.year() * 12 + month.month0() as i32;
        let lock = tx.dialect().pick(
            "SELECT pg_advisory_xact_lock(hashtext('steward_cost_aggregate'), $1)",
            "SELECT $1",
        );
        tx.execute(sql!(lock, month_key)).await?;
        let aggregated = tx.costs_aggregate(month).await?;
        tx.commit().await?;
        Ok(aggregated)
    }

    async fn monthly_costs(&self, filter: &CostFilter) -> StoreResult<Vec<MonthlyCost>> {
        let month = filter.month.map(|m| m.format("%Y-%m-%d").to_string());
        self.read()
            .await?
            .fetch_all(sql!(
                "SELECT tenant_id, module, CAST(month AS TEXT) AS month, calls, tokens, \
                     row_count, CAST(cost AS TEXT) AS cost \
                 FROM tenant_module_monthly_cost \
                 WHERE (CAST($1 AS TEXT) IS NULL OR CAST(month AS TEXT) = $1) \
                   AND (CAST($2 AS BIGINT) IS NULL OR tenant_id = $2) \
                   AND (CAST($3 AS TEXT) IS NULL OR module = $3) \
                 ORDER BY month, tenant_id, module",
                month,
                filter.tenant,
                filter.module.as_deref()
            ))
            .await?
            .iter()
            .map(|r| {
                let month = r.text("month")?;
                let cost = r.text("cost")?;
                Ok(MonthlyCost {
                    tenant_id: r.int("tenant_id")?,
                    module: r.text("module")?,
                    month: NaiveDate::parse_from_str(&month, "%Y-%m-%d")
                        .map_err(|e| corrupt(format!("month `{month}`: {e}")))?,
                    calls: r.int("calls")?,
                    tokens: r.int("tokens")?,
                    row_count: r.int("row_count")?,
                    cost: cost
                        .parse::<Decimal>()
                        .map(|d| d.normalize())
                        .map_err(|e| corrupt(format!("amount `{cost}`: {e}")))?,
                })
            })
            .collect()
    }

    async fn tenant_webhook(&self, tenant: TenantId) -> StoreResult<Option<WebhookTarget>> {
        let row = self
            .read()
            .await?
            .fetch_optional(sql!(
                "SELECT webhook_url, webhook_secret FROM tenants WHERE id = $1",
                tenant
            ))
            .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(
            match (
                row.opt_text("webhook_url")?,
                row.opt_text("webhook_secret")?,
            ) {
                (Some(url), Some(secret)) => Some(WebhookTarget { url, secret }),
                _ => None,
            },
        )
    }

    async fn tenant_set_webhook(
        &self,
        tenant: TenantId,
        target: Option<&WebhookTarget>,
    ) -> StoreResult<()> {
        let mut tx = self.write().await?;
        let updated = tx
            .execute(sql!(
                "UPDATE tenants SET webhook_url = $2, webhook_secret = $3 WHERE id = $1",
                tenant,
                target.map(|t| t.url.as_str()),
                target.map(|t| t.secret.as_str())
            ))
            .await?;
        if updated == 0 {
            return Err(StoreError::InvalidInput(format!("no tenant {tenant}")));
        }
        tx.commit().await
    }

    async fn tenant_webhook_reseal(
        &self,
        tenant: TenantId,
        read: &str,
        sealed: &str,
    ) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let updated = tx
            .execute(sql!(
                "UPDATE tenants SET webhook_secret = $3 WHERE id = $1 AND webhook_secret = $2",
                tenant,
                read,
                sealed
            ))
            .await?;
        tx.commit().await?;
        Ok(updated == 1)
    }
}
