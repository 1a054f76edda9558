//! PostgreSQL implementation of [`JobStore`]: the production backend, shared by many worker
//! processes on many machines.
//!
//! Hot-path design (see `ARCHITECTURE.md` for the measurements behind it):
//! - fetch is one `UPDATE … FROM (SELECT … FOR UPDATE SKIP LOCKED LIMIT n)` on a partial index
//!   that holds only available jobs, inside `steward_fetch` (migration 0017), which pins its
//!   plan to that index so that it does not degrade with the backlog or stale statistics;
//! - each outcome is one batched statement; completion moves the row to
//!   `steward_jobs_completed` in the same statement (`DELETE … RETURNING` into `INSERT`), so the
//!   hot table only holds live jobs;
//! - arrays are bound with `unnest`, so a batch of any size is one round trip;
//! - new work is signalled with `pg_notify`, delivered at commit (also for transactional enqueue).

pub mod conn;
pub(crate) mod data;
mod lifecycle;
mod runs;
mod vacuum;

use super::enqueue;
use super::handoff::{self, Offers};
use super::{Capabilities, FetchCursor, FetchParams, JobStore, StoreError, StoreResult};
use crate::types::{Enqueued, FetchedJob, Lease, NewJob, Outcome};
use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPoolOptions, PgRow};
use sqlx::{Executor, PgPool, Postgres, Row};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::broadcast;

/// How many connections a store keeps to PostgreSQL, per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSizes {
    /// Handlers' transactions, the API, operations and enqueues.
    pub work: u32,
    /// The runtime's bookkeeping (fetch, outcomes, heartbeats, maintenance).
    pub service: u32,
}

/// The PostgreSQL job store.
#[derive(Clone)]
pub struct PgStore {
    /// Work: handlers' step transactions, the API, the operations, enqueues.
    pool: PgPool,
    /// Bookkeeping: fetches, outcome writes, heartbeats, rescue, staging, notifications. Its
    /// own connections, so that handlers holding every work connection (long steps) never
    /// starve the runtime of the writes that keep its leases.
    service: PgPool,
    /// The `LISTEN` connection, alone in its pool.
    listen: PgPool,
    schema: Option<String>,
    channel: String,
    notify: broadcast::Sender<String>,
    listener_started: Arc<OnceLock<()>>,
    offers: Offers,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.schema)
            .finish()
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

impl PgStore {
    /// One try of [`JobStore::migrate`].
    async fn migrate_once(&self) -> StoreResult<()> {
        if let Some(schema) = &self.schema {
            self.pool
                .execute(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"").as_str())
                .await?;
        }
        MIGRATOR.run(&self.pool).await?;
        let mut tx = super::sql::SqlStore::write(self).await?;
        super::sql::modules::triggers_refresh(&mut *tx).await?;
        tx.commit().await
    }

    /// Connect. With `schema`, every connection works in that schema (tests and benchmarks use
    /// a fresh one each); it is created by [`JobStore::migrate`]. Pool sizes come from
    /// `STEWARD_DB_POOL` (work, default 10) and `STEWARD_DB_SERVICE_POOL` (bookkeeping,
    /// default 4).
    pub async fn connect(url: &str, schema: Option<&str>) -> StoreResult<Self> {
        let size = |name: &str, default: u32| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let pools = PoolSizes {
            work: size("STEWARD_DB_POOL", 10),
            service: size("STEWARD_DB_SERVICE_POOL", 4),
        };
        Self::connect_sized(url, schema, pools).await
    }

    /// Connect with an explicit work pool size (and the default bookkeeping pool).
    pub async fn connect_with(
        url: &str,
        schema: Option<&str>,
        max_connections: u32,
    ) -> StoreResult<Self> {
        let pools = PoolSizes {
            work: max_connections,
            service: 4,
        };
        Self::connect_sized(url, schema, pools).await
    }

    /// Connect with both pool sizes. Refused, saying what to change, when the server cannot
    /// take them: `max_connections` (less its reserved slots) smaller than the two pools.
    pub async fn connect_sized(
        url: &str,
        schema: Option<&str>,
        pools: PoolSizes,
    ) -> StoreResult<Self> {
        if pools.work == 0 || pools.service == 0 {
            return Err(StoreError::InvalidInput(
                "STEWARD_DB_POOL and STEWARD_DB_SERVICE_POOL must be at least 1".into(),
            ));
        }
        let mut options = PgConnectOptions::from_str(url)?;
        let schema = match schema {
            Some(schema) => Some(crate::domain::ident::validate_identifier(schema)?.to_string()),
            None => None,
        };
        if let Some(schema) = &schema {
            options = options.options([("search_path", schema.as_str())]);
        }
        let pool_options = |size: u32, wait: u64| {
            PgPoolOptions::new()
                .max_connections(size)
                // No ping before each use: it would add a round trip to every statement. A
                // dead connection fails its statement instead, which every caller retries.
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_secs(wait))
        };
        // One connection first: a server that is down or refuses us fails this at once, where
        // the pool would retry for its whole acquire timeout (callers wait with their own
        // bounded backoff, `--db-wait-secs`).
        sqlx::Connection::close(
            <sqlx::PgConnection as sqlx::Connection>::connect_with(&options).await?,
        )
        .await?;
        // Handlers queue for a work connection while others hold theirs for a long step;
        // bookkeeping waits briefly and retries on its next tick.
        let pool = pool_options(pools.work, 30)
            .connect_with(options.clone())
            .await?;
        let service = pool_options(pools.service, 5).connect_lazy_with(options.clone());
        // The listener's own connection (the "+ 1" below): a `PgListener` keeps the pooled
        // connection it is given, which would otherwise be one of the bookkeeping pool's.
        let listen = PgPoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(options);
        let (current, max, reserved): (String, String, String) = sqlx::query_as(
            "SELECT coalesce(current_schema(), 'public')::text, \
                    current_setting('max_connections'), \
                    current_setting('superuser_reserved_connections')",
        )
        .fetch_one(&pool)
        .await?;
        let usable = max
            .parse::<u32>()
            .unwrap_or(u32::MAX)
            .saturating_sub(reserved.parse::<u32>().unwrap_or(0));
        if pools.work + pools.service + 1 > usable {
            return Err(StoreError::InvalidInput(format!(
                "this process needs {} connections (STEWARD_DB_POOL {} + STEWARD_DB_SERVICE_POOL \
                 {} + 1 to listen) but the server allows {usable}: lower the pools or raise \
                 PostgreSQL's max_connections",
                pools.work + pools.service + 1,
                pools.work,
                pools.service
            )));
        }
        // Enqueues notify `steward_jobs_<schema>`; the schema is the one jobs are written to.
        let channel = format!("steward_jobs_{}", schema.as_deref().unwrap_or(&current));
        let (notify, _) = broadcast::channel(1024);
        Ok(Self {
            pool,
            service,
            listen,
            schema,
            channel,
            notify,
            listener_started: Arc::new(OnceLock::new()),
            offers: Offers::default(),
        })
    }

    /// Wake this process's producers of these queues.
    pub(crate) fn wake_local(&self, queues: &[String]) {
        for queue in queues {
            let _ = self.notify.send(queue.clone());
        }
    }

    /// The schema every connection works in, when one was given.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The connection pool, for callers that open their own transactions.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The bookkeeping pool (see [`PoolSizes`]); public for tests that starve it.
    pub fn service_pool(&self) -> &PgPool {
        &self.service
    }

    /// Drop the store's schema and everything in it (tests and benchmarks).
    ///
    /// The drop locks every table one after another, so a session still working in the schema
    /// (e.g. the backend of a worker process just killed, which runs its last statement to the
    /// end) can deadlock with it; such a transient failure is retried a few times.
    pub async fn drop_schema(&self) -> StoreResult<()> {
        let Some(schema) = &self.schema else {
            return Ok(());
        };
        use backon::{ExponentialBuilder, Retryable};
        let statement = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        let drop = || async {
            self.pool.execute(statement.as_str()).await?;
            Ok::<_, StoreError>(())
        };
        drop.retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_times(4),
        )
        .when(StoreError::is_transient)
        .await
    }

    /// Listen for enqueue signals on a dedicated connection (once per store), re-listening
    /// after a lost connection and waking every producer then, since signals may be lost.
    fn start_listener(&self) {
        if self.listener_started.set(()).is_err() {
            return;
        }
        let pool = self.listen.clone();
        let channel = self.channel.clone();
        let sender = self.notify.clone();
        tokio::spawn(async move {
            loop {
                let mut listener = match PgListener::connect_with(&pool).await {
                    Ok(listener) => listener,
                    Err(err) => {
                        tracing::warn!(error = %err, "LISTEN connection failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                if let Err(err) = listener.listen(&channel).await {
                    tracing::warn!(error = %err, "LISTEN failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                loop {
                    match listener.try_recv().await {
                        Ok(Some(note)) => {
                            let _ = sender.send(note.payload().to_string());
                        }
                        // The connection was lost and re-established: notifications may have
                        // been missed, so wake everyone.
                        Ok(None) => {
                            let _ = sender.send(String::new());
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "LISTEN connection lost");
                            let _ = sender.send(String::new());
                            break;
                        }
                    }
                    if sender.receiver_count() == 0 && pool.is_closed() {
                        return;
                    }
                }
            }
        });
    }

    async fn notify_queues(&self, queues: &[String]) -> StoreResult<()> {
        notify_queues(&self.service, queues).await
    }
}

async fn notify_queues<'e, E>(executor: E, queues: &[String]) -> StoreResult<()>
where
    E: Executor<'e, Database = Postgres>,
{
    if queues.is_empty() {
        return Ok(());
    }
    let mut distinct: Vec<&String> = queues.iter().collect();
    distinct.sort();
    distinct.dedup();
    sqlx::query(
        "SELECT pg_notify('steward_jobs_' || current_schema(), q) FROM unnest($1::text[]) AS q",
    )
    .bind(distinct)
    .execute(executor)
    .await?;
    Ok(())
}

/// Insert jobs on the caller's connection, typically inside the caller's transaction: the
/// jobs exist if and only if that transaction commits, and producers are woken at commit.
pub async fn insert_on(conn: &mut PgConnection, jobs: &[NewJob]) -> StoreResult<Vec<Enqueued>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    Ok(insert_jobs(conn, jobs, true).await?.0)
}

/// Insert without `pg_notify`, returning the queues that got available jobs: for workers that
/// enqueue follow-up work themselves (the next workflow step) and wake their own producers
/// after commit. PostgreSQL serialises the commits of notifying transactions, so a busy
/// workflow queue would otherwise commit one step at a time.
pub(crate) async fn insert_on_quietly(
    conn: &mut PgConnection,
    jobs: &[NewJob],
) -> StoreResult<(Vec<Enqueued>, Vec<String>)> {
    insert_jobs(conn, jobs, false).await
}

/// The enqueue statement: `steward_enqueue_many` (migration 0011), the one copy of it, which
/// SQL callers use too; with or without the `pg_notify` (see [`insert_on_quietly`]).
const INSERT_SQL: &str = "SELECT id, unique_key, state, queue \
     FROM steward_enqueue_many($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// Insert, returning the results in input order and the queues that got available jobs.
async fn insert_jobs(
    conn: &mut PgConnection,
    jobs: &[NewJob],
    notify: bool,
) -> StoreResult<(Vec<Enqueued>, Vec<String>)> {
    enqueue::insert_reconciled(&mut PgInsert { conn, notify }, jobs).await
}

/// An enqueue's rounds on a PostgreSQL connection, with or without `pg_notify`.
struct PgInsert<'c> {
    conn: &'c mut PgConnection,
    notify: bool,
}

#[async_trait]
impl enqueue::InsertRound for PgInsert<'_> {
    async fn insert(&mut self, batch: &[&NewJob]) -> StoreResult<Vec<enqueue::Inserted>> {
        let rows: Vec<(i64, Option<String>, String, String)> = sqlx::query_as(INSERT_SQL)
            .bind(batch.iter().map(|j| j.kind.as_str()).collect::<Vec<_>>())
            .bind(batch.iter().map(|j| j.queue.as_str()).collect::<Vec<_>>())
            .bind(batch.iter().map(|j| j.tenant.as_str()).collect::<Vec<_>>())
            .bind(batch.iter().map(|j| &j.payload).collect::<Vec<_>>())
            .bind(batch.iter().map(|j| j.priority).collect::<Vec<_>>())
            .bind(batch.iter().map(|j| j.max_attempts).collect::<Vec<_>>())
            .bind(batch.iter().map(|j| j.timeout_ms).collect::<Vec<_>>())
            .bind(
                batch
                    .iter()
                    .map(|j| j.unique_key.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(batch.iter().map(|j| j.run_at).collect::<Vec<_>>())
            .bind(self.notify)
            .fetch_all(&mut *self.conn)
            .await?;
        Ok(rows.into_iter().map(enqueue::Inserted::from_row).collect())
    }

    async fn holders(&mut self, keys: &[String]) -> StoreResult<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT unique_key, id FROM steward_jobs WHERE unique_key = ANY($1) AND state <> 'cancelled'",
        )
        .bind(keys)
        .fetch_all(&mut *self.conn)
        .await?)
    }
}

fn leases_from(rows: Vec<PgRow>) -> StoreResult<Vec<Lease>> {
    rows.iter()
        .map(|row| {
            Ok(Lease {
                id: row.try_get("id")?,
                attempt: row.try_get("attempt")?,
            })
        })
        .collect()
}

#[async_trait]
impl JobStore for PgStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            cross_process_notify: true,
            multi_node: true,
            name: "postgres",
        }
    }

    async fn migrate(&self) -> StoreResult<()> {
        // Run while workers are busy (a rolling deploy), the schema work can meet their
        // statements in a deadlock, which PostgreSQL resolves by failing one side: try again.
        let mut tries = 0u32;
        loop {
            match self.migrate_once().await {
                Err(err) if err.is_transient() && tries < 5 => {
                    tries += 1;
                    tracing::warn!(error = %err, tries, "migration interrupted; trying again");
                    tokio::time::sleep(std::time::Duration::from_millis(100 << tries)).await;
                }
                other => return other,
            }
        }
    }

    async fn jobs_insert_many(&self, jobs: &[NewJob]) -> StoreResult<Vec<Enqueued>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(handed) = handoff::enqueue(self, jobs).await? {
            return Ok(handed);
        }
        let mut conn = self.pool.acquire().await?;
        let (results, woken) = insert_jobs(&mut conn, jobs, true).await?;
        // Committed: wake this process's producers now, without waiting for the NOTIFY to
        // travel back through the listener connection (other processes get the NOTIFY).
        for queue in woken {
            let _ = self.notify.send(queue);
        }
        Ok(results)
    }

    async fn jobs_fetch_available(&self, params: FetchParams<'_>) -> StoreResult<Vec<FetchedJob>> {
        // The statement is `steward_fetch` (migration 0017): its plan walks the fetch index
        // from the cursor whatever the statistics say.
        let after = params.after.unwrap_or(FetchCursor::HEAD);
        let rows = sqlx::query(
            "SELECT id, kind, queue, tenant, payload, priority, fair_key, attempt, max_attempts, \
                    timeout_ms FROM steward_fetch($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(params.queue)
        .bind(params.limit as i64)
        .bind(params.worker)
        .bind(params.lease_for.as_millis() as i64)
        .bind(after.priority)
        .bind(after.fair_key)
        .bind(after.id)
        .fetch_all(&self.service)
        .await?;
        let mut jobs = rows
            .iter()
            .map(|row| {
                Ok(FetchedJob {
                    id: row.try_get("id")?,
                    kind: row.try_get("kind")?,
                    queue: row.try_get("queue")?,
                    tenant: row.try_get("tenant")?,
                    payload: row.try_get("payload")?,
                    priority: row.try_get("priority")?,
                    fair_key: row.try_get("fair_key")?,
                    attempt: row.try_get("attempt")?,
                    max_attempts: row.try_get("max_attempts")?,
                    timeout_ms: row.try_get("timeout_ms")?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        jobs.sort_by_key(|j| (j.priority, j.fair_key, j.id));
        Ok(jobs)
    }

    async fn jobs_apply_outcomes(
        &self,
        worker: &str,
        outcomes: &[Outcome],
    ) -> StoreResult<Vec<Lease>> {
        let mut applied = Vec::with_capacity(outcomes.len());
        let (mut c_ids, mut c_attempts, mut c_at) = (Vec::new(), Vec::new(), Vec::new());
        let (mut f_ids, mut f_attempts, mut f_errors, mut f_started, mut f_finished, mut f_retry) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        let (mut r_ids, mut r_attempts, mut r_at) = (Vec::new(), Vec::new(), Vec::new());
        for outcome in outcomes {
            match outcome {
                Outcome::Completed { lease, finished_at } => {
                    c_ids.push(lease.id);
                    c_attempts.push(lease.attempt);
                    c_at.push(*finished_at);
                }
                Outcome::Failed {
                    lease,
                    error,
                    started_at,
                    finished_at,
                    retry_at,
                } => {
                    f_ids.push(lease.id);
                    f_attempts.push(lease.attempt);
                    // PostgreSQL text cannot hold NUL: a handler's message must not make the
                    // whole batch fail.
                    f_errors.push(error.replace('\0', "\u{fffd}"));
                    f_started.push(*started_at);
                    f_finished.push(*finished_at);
                    f_retry.push(*retry_at);
                }
                Outcome::Released { lease, retry_at } => {
                    r_ids.push(lease.id);
                    r_attempts.push(lease.attempt);
                    r_at.push(*retry_at);
                }
            }
        }
        if !c_ids.is_empty() {
            // `steward_ack` (migration 0018): a plan linear in the batch.
            let rows = sqlx::query("SELECT id, attempt FROM steward_ack($1, $2, $3, $4)")
                .bind(&c_ids)
                .bind(&c_attempts)
                .bind(&c_at)
                .bind(worker)
                .fetch_all(&self.service)
                .await?;
            applied.extend(leases_from(rows)?);
        }
        if !f_ids.is_empty() {
            let rows = sqlx::query(
                r#"
                UPDATE steward_jobs j SET
                    state = CASE WHEN f.retry_at IS NULL THEN 'dead' ELSE 'retryable' END,
                    run_at = coalesce(f.retry_at, j.run_at),
                    finished_at = CASE WHEN f.retry_at IS NULL THEN f.finished_at END,
                    errors = j.errors || jsonb_build_array(jsonb_build_object(
                        'attempt', j.attempt, 'worker', j.leased_by, 'started_at', f.started_at,
                        'finished_at', f.finished_at, 'error', f.error)),
                    leased_by = NULL, lease_expires_at = NULL
                FROM unnest($1::int8[], $2::int4[], $3::text[], $4::timestamptz[], $5::timestamptz[],
                            $6::timestamptz[]) AS f(id, attempt, error, started_at, finished_at, retry_at)
                WHERE j.id = f.id AND j.attempt = f.attempt AND j.state = 'running' AND j.leased_by = $7
                RETURNING j.id, j.attempt
                "#,
            )
            .bind(&f_ids)
            .bind(&f_attempts)
            .bind(&f_errors)
            .bind(&f_started)
            .bind(&f_finished)
            .bind(&f_retry)
            .bind(worker)
            .fetch_all(&self.service)
            .await?;
            applied.extend(leases_from(rows)?);
        }
        if !r_ids.is_empty() {
            let rows = sqlx::query(
                r#"
                UPDATE steward_jobs j SET attempt = j.attempt - 1,
                    state = CASE WHEN r.retry_at IS NULL THEN 'available' ELSE 'scheduled' END,
                    run_at = coalesce(r.retry_at, j.run_at),
                    leased_by = NULL, lease_expires_at = NULL, attempted_at = NULL
                FROM unnest($1::int8[], $2::int4[], $4::timestamptz[]) AS r(id, attempt, retry_at)
                WHERE j.id = r.id AND j.attempt = r.attempt AND j.state = 'running' AND j.leased_by = $3
                RETURNING j.id, r.attempt AS attempt, j.queue
                "#,
            )
            .bind(&r_ids)
            .bind(&r_attempts)
            .bind(worker)
            .bind(&r_at)
            .fetch_all(&self.service)
            .await?;
            let queues = rows
                .iter()
                .map(|row| row.try_get::<String, _>("queue"))
                .collect::<Result<Vec<_>, _>>()?;
            applied.extend(leases_from(rows)?);
            self.notify_queues(&queues).await?;
        }
        Ok(applied)
    }

    async fn jobs_heartbeat_many(
        &self,
        worker: &str,
        leases: &[Lease],
        lease_for: Duration,
    ) -> StoreResult<Vec<Lease>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        // A row locked right now belongs to a transaction finishing that attempt (a step
        // committing with its acknowledgement, the completer): it is still ours, so it counts
        // as held, and it is skipped rather than waited for. Waiting would queue every other
        // acknowledgement behind the heartbeat, and would report as "lost" the rows those
        // transactions delete meanwhile, stopping attempts that were about to commit.
        let rows = sqlx::query(
            r#"
            WITH held AS (
                SELECT j.id, j.attempt FROM steward_jobs j
                JOIN unnest($1::int8[], $2::int4[]) AS h(id, attempt)
                  ON j.id = h.id AND j.attempt = h.attempt
                WHERE j.state = 'running' AND j.leased_by = $4
            ), free AS (
                SELECT j.id FROM steward_jobs j JOIN held ON j.id = held.id
                FOR UPDATE OF j SKIP LOCKED
            ), extended AS (
                UPDATE steward_jobs j SET lease_expires_at = now() + $3 * interval '1 millisecond'
                FROM free WHERE j.id = free.id
            )
            SELECT id, attempt FROM held
            "#,
        )
        .bind(leases.iter().map(|l| l.id).collect::<Vec<_>>())
        .bind(leases.iter().map(|l| l.attempt).collect::<Vec<_>>())
        .bind(lease_for.as_millis() as i64)
        .bind(worker)
        .fetch_all(&self.service)
        .await?;
        leases_from(rows)
    }

    async fn jobs_rescue_expired(
        &self,
        limit: usize,
        stalled_after: Duration,
    ) -> StoreResult<super::Rescue> {
        // Heartbeats take their connections from the same bookkeeping pool.
        let asked = std::time::Instant::now();
        let mut conn = self.service.acquire().await?;
        let waited = asked.elapsed();
        if waited > stalled_after {
            return Ok(super::Rescue::WriterStalled { waited });
        }
        let rows = sqlx::query(
            r#"
            WITH expired AS (
                SELECT id FROM steward_jobs
                WHERE state = 'running' AND lease_expires_at < now()
                ORDER BY lease_expires_at LIMIT $1
                FOR UPDATE SKIP LOCKED
            )
            UPDATE steward_jobs j SET
                state = CASE WHEN j.attempt >= j.max_attempts THEN 'dead' ELSE 'available' END,
                finished_at = CASE WHEN j.attempt >= j.max_attempts THEN now() END,
                errors = j.errors || jsonb_build_array(jsonb_build_object(
                    'attempt', j.attempt, 'worker', j.leased_by, 'started_at', j.attempted_at,
                    'finished_at', now(),
                    'error', 'lease expired: worker ' || coalesce(j.leased_by, '?') || ' stopped heartbeating')),
                leased_by = NULL, lease_expires_at = NULL
            FROM expired WHERE j.id = expired.id
            RETURNING j.queue, j.state
            "#,
        )
        .bind(limit as i64)
        .fetch_all(&mut *conn)
        .await?;
        drop(conn);
        let mut queues = Vec::new();
        for row in rows {
            if row.try_get::<String, _>("state")? == "available" {
                queues.push(row.try_get("queue")?);
            }
        }
        self.notify_queues(&queues).await?;
        Ok(super::Rescue::Rescued(queues))
    }

    async fn jobs_stage_due(&self, limit: usize) -> StoreResult<Vec<String>> {
        let rows = sqlx::query(
            r#"
            WITH due AS (
                SELECT id FROM steward_jobs
                WHERE state IN ('scheduled', 'retryable') AND run_at <= now()
                ORDER BY run_at LIMIT $1
                FOR UPDATE SKIP LOCKED
            )
            UPDATE steward_jobs j SET state = 'available'
            FROM due WHERE j.id = due.id
            RETURNING j.queue
            "#,
        )
        .bind(limit as i64)
        .fetch_all(&self.service)
        .await?;
        let queues = rows
            .iter()
            .map(|row| row.try_get::<String, _>("queue"))
            .collect::<Result<Vec<_>, _>>()?;
        self.notify_queues(&queues).await?;
        Ok(queues)
    }

    fn subscribe(&self) -> broadcast::Receiver<String> {
        self.start_listener();
        self.notify.subscribe()
    }

    fn offers(&self) -> &Offers {
        &self.offers
    }

    async fn jobs_insert_leased(
        &self,
        job: &NewJob,
        worker: &str,
        lease_for: Duration,
    ) -> StoreResult<Option<FetchedJob>> {
        // A plain prepared statement: no `NOTIFY` (the job is taken), no fair key to compute
        // (it is running; 1 is where a job enqueued into an empty queue starts).
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO steward_jobs (kind, queue, tenant, payload, state, priority, fair_key, \
                 max_attempts, timeout_ms, attempt, leased_by, attempted_at, lease_expires_at) \
             SELECT $1, $2, $3, $4, 'running', $5, 1, $6, $7, 1, $8, now(), \
                    now() + $9 * interval '1 millisecond' \
             WHERE NOT EXISTS (SELECT 1 FROM steward_queue_states p WHERE p.queue = $2 AND p.paused) \
             RETURNING id",
        )
        .bind(&job.kind)
        .bind(&job.queue)
        .bind(&job.tenant)
        .bind(&job.payload)
        .bind(job.priority)
        .bind(job.max_attempts)
        .bind(job.timeout_ms)
        .bind(worker)
        .bind(lease_for.as_millis() as i64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(id.map(|id| handoff::leased(id, job)))
    }
}
