//! SQLite implementation of [`JobStore`]: the embedded, zero-set-up, single-node backend.
//!
//! It mirrors `postgres/mod.rs` statement for statement. The differences are SQLite's: batches are
//! bound as one JSON array read with `json_each` (the `unnest` of PostgreSQL), timestamps are
//! unix milliseconds, writers are serialised by one in-process lock (SQLite has a single writer
//! anyway; the lock turns "database is busy" into an orderly queue), and new work is signalled
//! in process only, so producers in other processes poll.

pub mod conn;
pub(crate) mod data;
mod lifecycle;

use super::enqueue;
use super::handoff::{self, Offers};
use super::{Capabilities, FetchCursor, FetchParams, JobStore, StoreError, StoreResult};
use crate::types::{Enqueued, FetchedJob, Lease, NewJob, Outcome};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, broadcast};

/// The SQLite job store.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Progress of running workflow steps: SQLite's single writer is held by the step's own
    /// transaction, so progress is kept in memory (a single node reads it from here).
    pub(super) progress: Arc<std::sync::Mutex<HashMap<(i64, i32), Value>>>,
    pub(super) write_lock: Arc<Mutex<()>>,
    /// Lease extensions heartbeats could not write because a step transaction held the one
    /// writer (steps may hold it for long): (lease, worker, until ms). The next heartbeat or
    /// rescue round that gets the writer applies them first, so a long step never costs this
    /// process's other jobs their leases.
    pending_leases: Arc<std::sync::Mutex<HashMap<Lease, (String, i64)>>>,
    notify: broadcast::Sender<String>,
    offers: Offers,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish()
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

pub(super) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn ms(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

/// A time a job must not run before, in whole milliseconds rounded up: stored rounded down, a
/// retry could become due up to a millisecond before its backoff is over.
fn ms_up(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros().div_euclid(1000) + i64::from(at.timestamp_micros().rem_euclid(1000) > 0)
}

pub(super) fn from_ms(value: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_millis(value)
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {value} out of range")))
}

pub(super) fn from_opt_ms(value: Option<i64>) -> StoreResult<Option<DateTime<Utc>>> {
    value.map(from_ms).transpose()
}

/// RFC 3339 text of a unix-millisecond column, for attempt records kept as JSON.
const ISO: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', {} / 1000.0, 'unixepoch')";

fn iso(column: &str) -> String {
    ISO.replace("{}", column)
}

impl SqliteStore {
    /// Open (creating if missing) the database file a `sqlite:` URL names, in WAL mode.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        if let Some(parent) = options.get_filename().parent()
            && !parent.as_os_str().is_empty()
            && !parent.exists()
        {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::InvalidInput(format!(
                    "cannot create directory {}: {e}",
                    parent.display()
                ))
            })?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        let (notify, _) = broadcast::channel(1024);
        Ok(Self {
            pool,
            progress: Arc::default(),
            write_lock: Arc::new(Mutex::new(())),
            pending_leases: Arc::default(),
            notify,
            offers: Offers::default(),
        })
    }

    /// The connection pool, for callers that open their own transactions.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Write the lease extensions heartbeats kept while the writer was busy (the caller holds
    /// the write lock; `conn` is where it writes).
    async fn apply_pending_leases(&self, conn: &mut sqlx::SqliteConnection) -> StoreResult<()> {
        let pending: Vec<_> = std::mem::take(
            &mut *self
                .pending_leases
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_iter()
        .map(|(l, (worker, until))| {
            json!({"id": l.id, "attempt": l.attempt, "worker": worker, "until": until})
        })
        .collect();
        if pending.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE steward_jobs AS j SET lease_expires_at = max(j.lease_expires_at, h.until) \
             FROM (SELECT value ->> '$.id' AS id, value ->> '$.attempt' AS attempt, \
                          value ->> '$.worker' AS worker, value ->> '$.until' AS until \
                   FROM json_each(?1)) AS h \
             WHERE j.id = h.id AND j.attempt = h.attempt AND j.leased_by = h.worker \
               AND j.state = 'running'",
        )
        .bind(Value::Array(pending).to_string())
        .execute(conn)
        .await?;
        Ok(())
    }

    pub(super) fn wake(&self, mut queues: Vec<String>) {
        queues.sort();
        queues.dedup();
        for queue in queues {
            let _ = self.notify.send(queue);
        }
    }
}

/// Insert jobs on the caller's connection, typically inside the caller's transaction: the jobs
/// exist if and only if that transaction commits. SQLite has no cross-connection signal, so
/// producers see them at their next poll.
pub async fn insert_on(conn: &mut SqliteConnection, jobs: &[NewJob]) -> StoreResult<Vec<Enqueued>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    Ok(insert_jobs(conn, jobs).await?.0)
}

/// Insert, returning also the queues that got available jobs (to wake after commit).
pub(super) async fn insert_on_with_queues(
    conn: &mut SqliteConnection,
    jobs: &[NewJob],
) -> StoreResult<(Vec<Enqueued>, Vec<String>)> {
    if jobs.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    insert_jobs(conn, jobs).await
}

const INSERT_SQL: &str = r#"
WITH input AS MATERIALIZED (
    SELECT key AS ord, value ->> '$.kind' AS kind, value ->> '$.queue' AS queue,
           value ->> '$.tenant' AS tenant, value -> '$.payload' AS payload,
           value ->> '$.priority' AS priority, value ->> '$.max_attempts' AS max_attempts,
           value ->> '$.timeout_ms' AS timeout_ms, value ->> '$.unique_key' AS unique_key,
           value ->> '$.run_at' AS run_at
    FROM json_each(?1)
),
groups AS MATERIALIZED (
    SELECT g.queue, g.tenant, g.priority, max(
        coalesce((SELECT h.fair_key FROM steward_jobs h
                   WHERE h.state = 'available' AND h.queue = g.queue
                   ORDER BY h.priority, h.fair_key, h.id LIMIT 1), 0),
        coalesce(CASE WHEN g.tenant = ''
                      THEN (SELECT t.fair_key FROM steward_jobs t
                             WHERE t.state = 'available' AND t.queue = g.queue
                               AND t.priority = g.priority
                             ORDER BY t.fair_key DESC, t.id DESC LIMIT 1)
                      ELSE (SELECT max(t.fair_key) FROM steward_jobs t
                             WHERE t.state = 'available' AND t.queue = g.queue
                               AND t.tenant = g.tenant AND t.tenant <> '')
                 END, 0)
    ) AS base
    FROM (SELECT DISTINCT queue, tenant, priority FROM input) g
)
INSERT INTO steward_jobs (kind, queue, tenant, payload, state, priority, fair_key, max_attempts,
                          timeout_ms, unique_key, run_at, created_at)
SELECT i.kind, i.queue, i.tenant, i.payload,
       CASE WHEN i.run_at IS NULL OR i.run_at <= ?2 THEN 'available' ELSE 'scheduled' END,
       i.priority,
       g.base + row_number() OVER (PARTITION BY i.queue, i.tenant, i.priority ORDER BY i.ord),
       i.max_attempts, i.timeout_ms, i.unique_key, coalesce(i.run_at, ?2), ?2
FROM input i JOIN groups g ON g.queue = i.queue AND g.tenant = i.tenant AND g.priority = i.priority
WHERE true
ORDER BY i.ord
ON CONFLICT DO NOTHING
RETURNING id, unique_key, state, queue
"#;

async fn insert_jobs(
    conn: &mut SqliteConnection,
    jobs: &[NewJob],
) -> StoreResult<(Vec<Enqueued>, Vec<String>)> {
    enqueue::insert_reconciled(&mut SqliteInsert(conn), jobs).await
}

/// An enqueue's rounds on a SQLite connection.
struct SqliteInsert<'c>(&'c mut SqliteConnection);

#[async_trait]
impl enqueue::InsertRound for SqliteInsert<'_> {
    async fn insert(&mut self, batch: &[&NewJob]) -> StoreResult<Vec<enqueue::Inserted>> {
        let input: Vec<Value> = batch
            .iter()
            .map(|j| {
                json!({
                    "kind": j.kind, "queue": j.queue, "tenant": j.tenant, "payload": j.payload,
                    "priority": j.priority, "max_attempts": j.max_attempts,
                    "timeout_ms": j.timeout_ms, "unique_key": j.unique_key,
                    "run_at": j.run_at.map(ms),
                })
            })
            .collect();
        let rows: Vec<(i64, Option<String>, String, String)> = sqlx::query_as(INSERT_SQL)
            .bind(Value::Array(input).to_string())
            .bind(now_ms())
            .fetch_all(&mut *self.0)
            .await?;
        Ok(rows.into_iter().map(enqueue::Inserted::from_row).collect())
    }

    async fn holders(&mut self, keys: &[String]) -> StoreResult<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT unique_key, id FROM steward_jobs WHERE unique_key IN \
             (SELECT value FROM json_each(?1)) AND state <> 'cancelled'",
        )
        .bind(json!(keys).to_string())
        .fetch_all(&mut *self.0)
        .await?)
    }
}

fn leases_from(rows: Vec<SqliteRow>) -> StoreResult<Vec<Lease>> {
    rows.iter()
        .map(|row| {
            Ok(Lease {
                id: row.try_get("id")?,
                attempt: row.try_get("attempt")?,
            })
        })
        .collect()
}

fn queues_from(rows: &[SqliteRow]) -> StoreResult<Vec<String>> {
    rows.iter()
        .map(|row| row.try_get::<String, _>("queue").map_err(StoreError::from))
        .collect()
}

fn lease_json(leases: impl Iterator<Item = Lease>) -> String {
    Value::Array(
        leases
            .map(|l| json!({"id": l.id, "attempt": l.attempt}))
            .collect(),
    )
    .to_string()
}

#[async_trait]
impl JobStore for SqliteStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            cross_process_notify: false,
            multi_node: false,
            name: "sqlite",
        }
    }

    async fn migrate(&self) -> StoreResult<()> {
        {
            let _guard = self.write_lock.lock().await;
            MIGRATOR.run(&self.pool).await?;
        }
        let mut tx = super::sql::SqlStore::write(self).await?;
        super::sql::modules::triggers_refresh(&mut *tx).await?;
        tx.commit().await
    }

    async fn jobs_insert_many(&self, jobs: &[NewJob]) -> StoreResult<Vec<Enqueued>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(handed) = handoff::enqueue(self, jobs).await? {
            return Ok(handed);
        }
        let _guard = self.write_lock.lock().await;
        let mut conn = self.pool.acquire().await?;
        let (results, woken) = insert_jobs(&mut conn, jobs).await?;
        self.wake(woken);
        Ok(results)
    }

    async fn jobs_fetch_available(&self, params: FetchParams<'_>) -> StoreResult<Vec<FetchedJob>> {
        let _guard = self.write_lock.lock().await;
        // Read the clock once the lock is ours, so waiting for it does not shorten the lease.
        let now = now_ms();
        let after = params.after.unwrap_or(FetchCursor::HEAD);
        let rows = sqlx::query(
            r#"
            UPDATE steward_jobs
            SET state = 'running', attempt = attempt + 1, leased_by = ?1, attempted_at = ?2,
                lease_expires_at = ?3
            WHERE id IN (SELECT id FROM steward_jobs
                         WHERE state = 'available' AND queue = ?4
                           AND (priority, fair_key, id) > (?6, ?7, ?8)
                           AND NOT EXISTS (SELECT 1 FROM steward_queue_states p
                                           WHERE p.queue = ?4 AND p.paused)
                         ORDER BY priority, fair_key, id LIMIT ?5)
            RETURNING id, kind, queue, tenant, payload, priority, fair_key, attempt, max_attempts,
                      timeout_ms
            "#,
        )
        .bind(params.worker)
        .bind(now)
        .bind(now + params.lease_for.as_millis() as i64)
        .bind(params.queue)
        .bind(params.limit as i64)
        .bind(after.priority)
        .bind(after.fair_key)
        .bind(after.id)
        .fetch_all(&self.pool)
        .await?;
        drop(_guard);
        let mut jobs = rows
            .iter()
            .map(|row| {
                let payload: String = row.try_get("payload")?;
                Ok(FetchedJob {
                    id: row.try_get("id")?,
                    kind: row.try_get("kind")?,
                    queue: row.try_get("queue")?,
                    tenant: row.try_get("tenant")?,
                    payload: serde_json::from_str(&payload)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
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
        let mut completed = Vec::new();
        let mut failed = Vec::new();
        let mut released = Vec::new();
        for outcome in outcomes {
            match outcome {
                Outcome::Completed { lease, finished_at } => completed.push(
                    json!({"id": lease.id, "attempt": lease.attempt, "finished_at": ms(*finished_at)}),
                ),
                Outcome::Failed {
                    lease,
                    error,
                    started_at,
                    finished_at,
                    retry_at,
                } => failed.push(json!({
                    "id": lease.id, "attempt": lease.attempt, "error": error,
                    "started_at": started_at.to_rfc3339(), "finished_at": finished_at.to_rfc3339(),
                    "finished_ms": ms(*finished_at), "retry_at": retry_at.map(ms_up),
                })),
                Outcome::Released { lease, retry_at } => {
                    released.push(json!({"id": lease.id, "attempt": lease.attempt,
                        "retry_at": retry_at.map(ms_up)}))
                }
            }
        }
        let mut applied = Vec::with_capacity(outcomes.len());
        let _guard = self.write_lock.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if !completed.is_empty() {
            let rows = sqlx::query(
                r#"
                INSERT INTO steward_jobs_completed (id, kind, queue, tenant, payload, priority, attempt,
                    max_attempts, timeout_ms, unique_key, run_at, created_at, attempted_at, leased_by,
                    finished_at, errors)
                SELECT j.id, j.kind, j.queue, j.tenant, j.payload, j.priority, j.attempt, j.max_attempts,
                       j.timeout_ms, j.unique_key, j.run_at, j.created_at, j.attempted_at, j.leased_by,
                       c.value ->> '$.finished_at', j.errors
                FROM json_each(?1) AS c CROSS JOIN steward_jobs AS j
                WHERE j.id = (c.value ->> '$.id') AND j.attempt = (c.value ->> '$.attempt')
                  AND j.state = 'running' AND j.leased_by = ?2
                RETURNING id, attempt
                "#,
            )
            .bind(Value::Array(completed).to_string())
            .bind(worker)
            .fetch_all(&mut *tx)
            .await?;
            let done = leases_from(rows)?;
            sqlx::query(
                "DELETE FROM steward_jobs WHERE id IN (SELECT value ->> '$.id' FROM json_each(?1))",
            )
            .bind(lease_json(done.iter().copied()))
            .execute(&mut *tx)
            .await?;
            applied.extend(done);
        }
        if !failed.is_empty() {
            let rows = sqlx::query(
                r#"
                UPDATE steward_jobs AS j SET
                    state = CASE WHEN f.retry_at IS NULL THEN 'dead' ELSE 'retryable' END,
                    run_at = coalesce(f.retry_at, j.run_at),
                    finished_at = CASE WHEN f.retry_at IS NULL THEN f.finished_ms END,
                    errors = json_insert(j.errors, '$[#]', json_object(
                        'attempt', j.attempt, 'worker', j.leased_by, 'started_at', f.started_at,
                        'finished_at', f.finished_at, 'error', f.error)),
                    leased_by = NULL, lease_expires_at = NULL
                FROM (SELECT value ->> '$.id' AS id, value ->> '$.attempt' AS attempt,
                             value ->> '$.error' AS error, value ->> '$.started_at' AS started_at,
                             value ->> '$.finished_at' AS finished_at,
                             value ->> '$.finished_ms' AS finished_ms,
                             value ->> '$.retry_at' AS retry_at
                      FROM json_each(?1)) AS f
                WHERE j.id = f.id AND j.attempt = f.attempt AND j.state = 'running' AND j.leased_by = ?2
                RETURNING id, attempt
                "#,
            )
            .bind(Value::Array(failed).to_string())
            .bind(worker)
            .fetch_all(&mut *tx)
            .await?;
            applied.extend(leases_from(rows)?);
        }
        let mut woken = Vec::new();
        if !released.is_empty() {
            let rows = sqlx::query(
                r#"
                UPDATE steward_jobs AS j SET attempt = j.attempt - 1,
                    state = CASE WHEN r.retry_at IS NULL THEN 'available' ELSE 'scheduled' END,
                    run_at = coalesce(r.retry_at, j.run_at),
                    leased_by = NULL, lease_expires_at = NULL, attempted_at = NULL
                FROM (SELECT value ->> '$.id' AS id, value ->> '$.attempt' AS attempt,
                             value ->> '$.retry_at' AS retry_at
                      FROM json_each(?1)) AS r
                WHERE j.id = r.id AND j.attempt = r.attempt AND j.state = 'running' AND j.leased_by = ?2
                RETURNING id, attempt + 1 AS attempt, queue
                "#,
            )
            .bind(Value::Array(released).to_string())
            .bind(worker)
            .fetch_all(&mut *tx)
            .await?;
            woken = queues_from(&rows)?;
            applied.extend(leases_from(rows)?);
        }
        tx.commit().await?;
        drop(_guard);
        self.wake(woken);
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
        let Ok(_guard) = self.write_lock.try_lock() else {
            // A step transaction holds the one writer, maybe for long: read (WAL readers do
            // not wait) which leases the worker still holds, and keep their extension for the
            // next writer of this process (the rescuer applies them before it looks).
            let rows = sqlx::query(
                "SELECT j.id, j.attempt FROM steward_jobs j \
                 JOIN (SELECT value ->> '$.id' AS id, value ->> '$.attempt' AS attempt \
                       FROM json_each(?1)) AS h ON j.id = h.id AND j.attempt = h.attempt \
                 WHERE j.state = 'running' AND j.leased_by = ?2",
            )
            .bind(lease_json(leases.iter().copied()))
            .bind(worker)
            .fetch_all(&self.pool)
            .await?;
            let held = leases_from(rows)?;
            let until = now_ms() + lease_for.as_millis() as i64;
            self.pending_leases
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(held.iter().map(|l| (*l, (worker.to_string(), until))));
            return Ok(held);
        };
        let mut conn = self.pool.acquire().await?;
        self.apply_pending_leases(&mut conn).await?;
        let rows = sqlx::query(
            r#"
            UPDATE steward_jobs AS j SET lease_expires_at = ?2
            FROM (SELECT value ->> '$.id' AS id, value ->> '$.attempt' AS attempt
                  FROM json_each(?1)) AS h
            WHERE j.id = h.id AND j.attempt = h.attempt AND j.state = 'running' AND j.leased_by = ?3
            RETURNING id, attempt
            "#,
        )
        .bind(lease_json(leases.iter().copied()))
        .bind(now_ms() + lease_for.as_millis() as i64)
        .bind(worker)
        .fetch_all(&mut *conn)
        .await?;
        leases_from(rows)
    }

    async fn jobs_rescue_expired(
        &self,
        limit: usize,
        stalled_after: Duration,
    ) -> StoreResult<super::Rescue> {
        // The writer is this process's lock, then the file's lock (other processes): an
        // IMMEDIATE transaction has both, and the time it took says how long heartbeats of
        // every process may have waited.
        let asked = std::time::Instant::now();
        let _guard = self.write_lock.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let waited = asked.elapsed();
        self.apply_pending_leases(&mut tx).await?;
        if waited > stalled_after {
            tx.commit().await?;
            return Ok(super::Rescue::WriterStalled { waited });
        }
        let rows = sqlx::query(&format!(
            r#"
            UPDATE steward_jobs SET
                state = CASE WHEN attempt >= max_attempts THEN 'dead' ELSE 'available' END,
                finished_at = CASE WHEN attempt >= max_attempts THEN ?1 END,
                errors = json_insert(errors, '$[#]', json_object(
                    'attempt', attempt, 'worker', leased_by, 'started_at', {started},
                    'finished_at', {finished},
                    'error', 'lease expired: worker ' || coalesce(leased_by, '?') || ' stopped heartbeating')),
                leased_by = NULL, lease_expires_at = NULL
            WHERE id IN (SELECT id FROM steward_jobs WHERE state = 'running' AND lease_expires_at < ?1
                         ORDER BY lease_expires_at LIMIT ?2)
            RETURNING queue, state
            "#,
            started = iso("attempted_at"),
            finished = iso("?1"),
        ))
        .bind(now_ms())
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        drop(_guard);
        let mut queues = Vec::new();
        for row in rows {
            if row.try_get::<String, _>("state")? == "available" {
                queues.push(row.try_get("queue")?);
            }
        }
        self.wake(queues.clone());
        Ok(super::Rescue::Rescued(queues))
    }

    async fn jobs_stage_due(&self, limit: usize) -> StoreResult<Vec<String>> {
        let _guard = self.write_lock.lock().await;
        let rows = sqlx::query(
            "UPDATE steward_jobs SET state = 'available' WHERE id IN (SELECT id FROM steward_jobs \
             WHERE state IN ('scheduled', 'retryable') AND run_at <= ?1 ORDER BY run_at LIMIT ?2) \
             RETURNING queue",
        )
        .bind(now_ms())
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        drop(_guard);
        let queues = queues_from(&rows)?;
        self.wake(queues.clone());
        Ok(queues)
    }

    fn subscribe(&self) -> broadcast::Receiver<String> {
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
        let _guard = self.write_lock.lock().await;
        let now = now_ms();
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO steward_jobs (kind, queue, tenant, payload, state, priority, fair_key, \
                 max_attempts, timeout_ms, run_at, created_at, attempt, leased_by, attempted_at, \
                 lease_expires_at) \
             SELECT ?1, ?2, ?3, ?4, 'running', ?5, 1, ?6, ?7, ?8, ?8, 1, ?9, ?8, ?10 \
             WHERE NOT EXISTS (SELECT 1 FROM steward_queue_states p WHERE p.queue = ?2 AND p.paused) \
             RETURNING id",
        )
        .bind(&job.kind)
        .bind(&job.queue)
        .bind(&job.tenant)
        .bind(job.payload.to_string())
        .bind(job.priority)
        .bind(job.max_attempts)
        .bind(job.timeout_ms)
        .bind(now)
        .bind(worker)
        .bind(now + lease_for.as_millis() as i64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(id.map(|id| handoff::leased(id, job)))
    }
}
