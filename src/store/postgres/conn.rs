//! [`Conn`] on PostgreSQL: portable statements bound to `sqlx`, and the lifecycle primitives
//! written in PostgreSQL's own dialect (`postgres/lifecycle.rs`).

use crate::domain::ident::{ModuleTable, Slug};
use crate::store::domain::TenantId;
use crate::store::postgres::{PgStore, data, insert_on, insert_on_quietly, lifecycle};
use crate::store::runs::{CompletionOutcome, StepCompletion};
use crate::store::sql::{AnyRow, Arg, Conn, Dialect, Row, Sql, SqlStore, Tx, plain_getters};
use crate::store::{StoreError, StoreResult};
use crate::types::{Enqueued, Lease, NewJob};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgConnection, PgRow};
use sqlx::query::Query;
use sqlx::{Postgres, Row as _, Transaction};

const DIALECT: Dialect = Dialect::Postgres;

impl Row for PgRow {
    plain_getters!();
    fn opt_time(&self, column: &str) -> StoreResult<Option<DateTime<Utc>>> {
        Ok(self.try_get(column)?)
    }
    fn opt_json(&self, column: &str) -> StoreResult<Option<Value>> {
        Ok(self.try_get(column)?)
    }
}

fn bind(sql: &str, args: Vec<Arg>) -> Query<'_, Postgres, PgArguments> {
    let mut query = sqlx::query(sql);
    for arg in args {
        query = match arg {
            Arg::Text(v) => query.bind(v),
            Arg::Int(v) => query.bind(v),
            Arg::Int32(v) => query.bind(v),
            Arg::Bool(v) => query.bind(v),
            Arg::Time(v) => query.bind(v),
            // (Whole microseconds: an interval has no finer unit.)
            Arg::Duration(v) => query.bind(sqlx::postgres::types::PgInterval {
                months: 0,
                days: 0,
                microseconds: i64::try_from(v.as_micros()).unwrap_or(i64::MAX),
            }),
            Arg::Json(v) => query.bind(v),
            Arg::Ints(v) => query.bind(v),
            Arg::Texts(v) => query.bind(v),
            Arg::RowTime(v) => query.bind(v.map(|t| t.naive_utc())),
        };
    }
    query
}

enum Inner {
    Tx(Transaction<'static, Postgres>),
    Pooled(PoolConnection<Postgres>),
}

/// A pooled connection or a transaction of a [`PgStore`].
pub struct PgConn {
    inner: Inner,
    store: PgStore,
    /// Enqueues skip `pg_notify` and wake this process's producers at commit instead (step
    /// transactions: PostgreSQL serialises the commits of notifying transactions).
    quiet: bool,
    woken: Vec<String>,
    /// The module tables' trigger functions were made in this transaction already: once is
    /// enough (replacing a function invalidates every session's cached plans of it).
    functions_made: bool,
}

impl PgConn {
    pub(crate) async fn begin(store: &PgStore, quiet: bool) -> StoreResult<Self> {
        Ok(Self {
            inner: Inner::Tx(store.pool().begin().await?),
            store: store.clone(),
            quiet,
            woken: Vec::new(),
            functions_made: false,
        })
    }

    pub(crate) async fn acquire(store: &PgStore) -> StoreResult<Self> {
        Ok(Self {
            inner: Inner::Pooled(store.pool().acquire().await?),
            store: store.clone(),
            quiet: false,
            woken: Vec::new(),
            functions_made: false,
        })
    }

    fn conn(&mut self) -> &mut PgConnection {
        match &mut self.inner {
            Inner::Tx(tx) => tx,
            Inner::Pooled(conn) => conn,
        }
    }
}

#[async_trait]
impl Conn for PgConn {
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
        notify_nodes: bool,
    ) -> StoreResult<Vec<Enqueued>> {
        if notify_nodes || !self.quiet {
            // (`insert_on` notifies at commit, this process's producers included.)
            return insert_on(self.conn(), jobs).await;
        }
        let (enqueued, queues) = insert_on_quietly(self.conn(), jobs).await?;
        self.woken.extend(queues);
        Ok(enqueued)
    }

    async fn job_acknowledge(&mut self, lease: Lease, worker: &str) -> StoreResult<bool> {
        // The fence is checked here, in the same transaction: the job row is not locked while
        // the step runs (heartbeats must not wait on it), so the acknowledgement decides.
        let moved = sqlx::query(
            "WITH done AS (DELETE FROM steward_jobs WHERE id = $1 AND attempt = $2 AND leased_by = $3 \
                           AND state = 'running' RETURNING *) \
             INSERT INTO steward_jobs_completed (id, kind, queue, tenant, payload, priority, attempt, \
                 max_attempts, timeout_ms, unique_key, run_at, created_at, attempted_at, leased_by, \
                 finished_at, errors) \
             SELECT id, kind, queue, tenant, payload, priority, attempt, max_attempts, timeout_ms, \
                    unique_key, run_at, created_at, attempted_at, leased_by, now(), errors FROM done",
        )
        .bind(lease.id)
        .bind(lease.attempt)
        .bind(worker)
        .execute(self.conn())
        .await?
        .rows_affected();
        Ok(moved == 1)
    }

    async fn privilege(&mut self, kind: &'static str, on: bool) -> StoreResult<()> {
        lifecycle::privilege(self.conn(), kind, on).await
    }

    async fn script(&mut self, sql: &str) -> StoreResult<()> {
        sqlx::Executor::execute(self.conn(), sql).await?;
        Ok(())
    }

    async fn migration_lock(&mut self, shared: bool) -> StoreResult<()> {
        lifecycle::migration_lock(self.conn(), shared).await
    }

    async fn roles_ensure(&mut self) -> StoreResult<()> {
        lifecycle::roles_ensure(self.conn()).await
    }

    async fn table_adopt(&mut self, _module: &Slug, table: &ModuleTable) -> StoreResult<()> {
        lifecycle::table_adopt(self.conn(), table).await
    }

    async fn table_triggers(
        &mut self,
        module: &Slug,
        table: &ModuleTable,
        _columns: &[String],
    ) -> StoreResult<()> {
        let make_functions = !std::mem::replace(&mut self.functions_made, true);
        lifecycle::table_triggers(self.conn(), module, table, make_functions).await
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
impl Tx for PgConn {
    async fn commit(self: Box<Self>) -> StoreResult<()> {
        let this = *self;
        match this.inner {
            Inner::Tx(tx) => tx.commit().await?,
            Inner::Pooled(_) => {
                return Err(StoreError::Corrupt(
                    "commit of a connection that is not a transaction".into(),
                ));
            }
        }
        this.store.wake_local(&this.woken);
        Ok(())
    }
}

#[async_trait]
impl SqlStore for PgStore {
    fn sql_dialect(&self) -> Dialect {
        DIALECT
    }

    async fn write(&self) -> StoreResult<Box<dyn Tx>> {
        Ok(Box::new(PgConn::begin(self, false).await?))
    }

    async fn write_step(&self) -> StoreResult<Box<dyn Tx>> {
        Ok(Box::new(PgConn::begin(self, true).await?))
    }

    async fn write_service(&self) -> StoreResult<Box<dyn Tx>> {
        Ok(Box::new(PgConn {
            inner: Inner::Tx(self.service_pool().begin().await?),
            store: self.clone(),
            quiet: false,
            woken: Vec::new(),
            functions_made: false,
        }))
    }

    async fn read(&self) -> StoreResult<Box<dyn Conn>> {
        Ok(Box::new(PgConn::acquire(self).await?))
    }

    async fn table_dump(
        &self,
        table: &ModuleTable,
        _columns: &[String],
        tenant: Option<TenantId>,
        out: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
    ) -> StoreResult<u64> {
        lifecycle::table_dump(self.pool(), table, tenant, out).await
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
        self.notify_queues(&queues).await
    }

    async fn tables_vacuum(&self, min_dead: u64) -> StoreResult<u64> {
        self.vacuum_tables(min_dead).await
    }

    async fn progress_set(&self, run_id: i64, idx: i32, progress: &Value) -> StoreResult<()> {
        sqlx::query("UPDATE steward_run_steps SET progress = $3 WHERE run_id = $1 AND idx = $2")
            .bind(run_id)
            .bind(idx)
            .bind(progress)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn steps_complete_batched(
        &self,
        items: &[StepCompletion],
    ) -> StoreResult<Option<Vec<CompletionOutcome>>> {
        Ok(Some(self.steps_complete_batch(items).await?))
    }
}
