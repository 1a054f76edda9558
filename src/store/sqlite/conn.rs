//! [`Conn`] on SQLite: portable statements bound to `sqlx` (timestamps as unix milliseconds,
//! JSON as text), and the lifecycle primitives in SQLite's dialect (`sqlite/lifecycle.rs`).
//! A write transaction holds the store's write lock from `begin` to its end: SQLite has one
//! writer, and the lock stands in for PostgreSQL's row locks.

use crate::domain::ident::{ModuleTable, Slug};
use crate::store::domain::TenantId;
use crate::store::sql::{
    AnyRow, Arg, Conn, Dialect, Row, Sql, SqlStore, Tx, corrupt, plain_getters,
};
use crate::store::sqlite::{
    SqliteStore, data, from_opt_ms, insert_on_with_queues, lifecycle, now_ms,
};
use crate::store::{StoreError, StoreResult};
use crate::types::{Enqueued, Lease, NewJob};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::pool::PoolConnection;
use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteConnection, SqliteRow};
use sqlx::{Row as _, Sqlite, Transaction};
use tokio::sync::OwnedMutexGuard;

const DIALECT: Dialect = Dialect::Sqlite;

impl Row for SqliteRow {
    plain_getters!();
    fn opt_time(&self, column: &str) -> StoreResult<Option<DateTime<Utc>>> {
        from_opt_ms(self.try_get(column)?)
    }
    fn opt_json(&self, column: &str) -> StoreResult<Option<Value>> {
        let text: Option<String> = self.try_get(column)?;
        text.map(|t| serde_json::from_str(&t).map_err(corrupt))
            .transpose()
    }
}

fn bind(sql: &str, args: Vec<Arg>) -> Query<'_, Sqlite, SqliteArguments<'_>> {
    let mut query = sqlx::query(sql);
    for arg in args {
        query = match arg {
            Arg::Text(v) => query.bind(v),
            Arg::Int(v) => query.bind(v),
            Arg::Int32(v) => query.bind(v),
            Arg::Bool(v) => query.bind(v),
            Arg::Time(v) => query.bind(v.map(|t| t.timestamp_millis())),
            Arg::Duration(v) => query.bind(i64::try_from(v.as_millis()).unwrap_or(i64::MAX)),
            Arg::Json(v) => query.bind(v.map(|v| v.to_string())),
            Arg::Ints(v) => query.bind(Value::from(v).to_string()),
            Arg::Texts(v) => query.bind(Value::from(v).to_string()),
            Arg::RowTime(v) => query.bind(super::data::cutoff(v)),
        };
    }
    query
}

enum Inner {
    Tx(Transaction<'static, Sqlite>, OwnedMutexGuard<()>),
    Pooled(PoolConnection<Sqlite>),
}

/// A pooled connection, or a write transaction holding the write lock, of a [`SqliteStore`].
pub struct SqliteConn {
    inner: Inner,
    store: SqliteStore,
    /// Queues that got available jobs: their producers are woken at commit.
    woken: Vec<String>,
}

impl SqliteConn {
    pub(crate) async fn begin(store: &SqliteStore) -> StoreResult<Self> {
        let guard = store.write_lock.clone().lock_owned().await;
        Ok(Self {
            inner: Inner::Tx(store.pool().begin_with("BEGIN IMMEDIATE").await?, guard),
            store: store.clone(),
            woken: Vec::new(),
        })
    }

    pub(crate) async fn acquire(store: &SqliteStore) -> StoreResult<Self> {
        Ok(Self {
            inner: Inner::Pooled(store.pool().acquire().await?),
            store: store.clone(),
            woken: Vec::new(),
        })
    }

    fn conn(&mut self) -> &mut SqliteConnection {
        match &mut self.inner {
            Inner::Tx(tx, _) => tx,
            Inner::Pooled(conn) => conn,
        }
    }
}

#[async_trait]
impl Conn for SqliteConn {
    fn dialect(&self) -> Dialect {
        DIALECT
    }

    async fn execute(&mut self, sql: Sql) -> StoreResult<u64> {
        let text = DIALECT.render(&sql.text);
        let done = bind(&text, sql.args).execute(self.conn()).await?;
        Ok(done.rows_affected())
    }

    async fn fetch_all(&mut self, sql: Sql) -> StoreResult<Vec<AnyRow>> {
        let text = DIALECT.render(&sql.text);
        let rows = bind(&text, sql.args).fetch_all(self.conn()).await?;
        Ok(rows.into_iter().map(|r| Box::new(r) as AnyRow).collect())
    }

    async fn fetch_optional(&mut self, sql: Sql) -> StoreResult<Option<AnyRow>> {
        let text = DIALECT.render(&sql.text);
        let row = bind(&text, sql.args).fetch_optional(self.conn()).await?;
        Ok(row.map(|r| Box::new(r) as AnyRow))
    }

    async fn jobs_insert(
        &mut self,
        jobs: &[NewJob],
        _notify_nodes: bool,
    ) -> StoreResult<Vec<Enqueued>> {
        let (enqueued, queues) = insert_on_with_queues(self.conn(), jobs).await?;
        self.woken.extend(queues);
        Ok(enqueued)
    }

    async fn job_acknowledge(&mut self, lease: Lease, worker: &str) -> StoreResult<bool> {
        let moved = sqlx::query(
            "INSERT INTO steward_jobs_completed (id, kind, queue, tenant, payload, priority, attempt, \
                 max_attempts, timeout_ms, unique_key, run_at, created_at, attempted_at, leased_by, \
                 finished_at, errors) \
             SELECT id, kind, queue, tenant, payload, priority, attempt, max_attempts, timeout_ms, \
                    unique_key, run_at, created_at, attempted_at, leased_by, ?4, errors \
             FROM steward_jobs WHERE id = ?1 AND attempt = ?2 AND leased_by = ?3 AND state = 'running'",
        )
        .bind(lease.id)
        .bind(lease.attempt)
        .bind(worker)
        .bind(now_ms())
        .execute(self.conn())
        .await?
        .rows_affected();
        if moved != 1 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM steward_jobs WHERE id = ?1")
            .bind(lease.id)
            .execute(self.conn())
            .await?;
        Ok(true)
    }

    async fn privilege(&mut self, kind: &'static str, on: bool) -> StoreResult<()> {
        let sql = match (kind, on) {
            ("purge", true) => "INSERT INTO steward_purging (marker) VALUES (1)",
            ("purge", false) => "DELETE FROM steward_purging",
            _ => return Ok(()),
        };
        sqlx::query(sql).execute(self.conn()).await?;
        Ok(())
    }

    async fn script(&mut self, sql: &str) -> StoreResult<()> {
        sqlx::Executor::execute(self.conn(), sql).await?;
        Ok(())
    }

    async fn table_triggers(
        &mut self,
        module: &Slug,
        table: &ModuleTable,
        columns: &[String],
    ) -> StoreResult<()> {
        lifecycle::table_triggers(self.conn(), module, table, columns).await
    }

    async fn table_triggers_drop(&mut self, table: &ModuleTable) -> StoreResult<()> {
        lifecycle::table_triggers_drop(self.conn(), table).await
    }

    async fn post_upgrade(&mut self, tenants: &[TenantId], posts: &[String]) -> StoreResult<()> {
        lifecycle::post_upgrade(self.conn(), tenants, posts).await
    }

    async fn costs_aggregate(
        &mut self,
        month: chrono::NaiveDate,
    ) -> StoreResult<crate::store::data::CostAggregated> {
        data::costs_aggregate(self.conn(), month).await
    }
}

#[async_trait]
impl Tx for SqliteConn {
    async fn commit(self: Box<Self>) -> StoreResult<()> {
        let this = *self;
        match this.inner {
            Inner::Tx(tx, guard) => {
                tx.commit().await?;
                drop(guard);
            }
            Inner::Pooled(_) => {
                return Err(StoreError::Corrupt(
                    "commit of a connection that is not a transaction".into(),
                ));
            }
        }
        this.store.wake(this.woken);
        Ok(())
    }
}

#[async_trait]
impl SqlStore for SqliteStore {
    fn sql_dialect(&self) -> Dialect {
        DIALECT
    }

    async fn write(&self) -> StoreResult<Box<dyn Tx>> {
        Ok(Box::new(SqliteConn::begin(self).await?))
    }

    async fn read(&self) -> StoreResult<Box<dyn Conn>> {
        Ok(Box::new(SqliteConn::acquire(self).await?))
    }

    async fn table_dump(
        &self,
        table: &ModuleTable,
        columns: &[String],
        tenant: Option<TenantId>,
        out: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
    ) -> StoreResult<u64> {
        lifecycle::table_dump(self.pool(), table, columns, tenant, out).await
    }

    async fn rows_export(
        &self,
        table: &ModuleTable,
        columns: &[String],
        tenant: TenantId,
        before: Option<DateTime<Utc>>,
        out: tokio::sync::mpsc::Sender<crate::store::data::RowBatch>,
    ) -> StoreResult<u64> {
        data::rows_export(self.pool(), table, columns, tenant, before, out).await
    }

    async fn queues_woken(&self, queues: Vec<String>) -> StoreResult<()> {
        self.wake(queues);
        Ok(())
    }

    async fn tables_vacuum(&self, _min_dead: u64) -> StoreResult<u64> {
        // A deleted row's pages go to the file's free list and the next inserts reuse them:
        // there are no dead row versions to reclaim (the file never shrinks, nor does it grow
        // past its high-water mark).
        Ok(0)
    }

    async fn progress_set(&self, run_id: i64, idx: i32, progress: &Value) -> StoreResult<()> {
        // The step's own transaction holds SQLite's single writer: keep progress in memory.
        self.progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((run_id, idx), progress.clone());
        Ok(())
    }

    fn progress_overlay(&self, run_id: i64, idx: i32) -> Option<Value> {
        self.progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(run_id, idx))
            .cloned()
    }
}
