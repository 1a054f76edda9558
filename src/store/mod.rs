//! Storage: the only place that writes SQL.
//!
//! [`JobStore`] is the boundary between the queue runtime and a database, in the spirit of
//! River's driver interface and Oban's engine: batch-shaped methods named noun-verb, each
//! fenced where a worker's lease matters. [`postgres::PgStore`] and [`sqlite::SqliteStore`]
//! implement it file for file, and `tests/conformance.rs` runs one suite against both.
//! Backend differences are stated once, in [`Capabilities`].

pub mod control;
pub mod data;
pub mod domain;
mod enqueue;
pub mod error;
pub mod handoff;
pub mod limits;
pub mod postgres;
pub mod runs;
pub mod sql;
pub mod sqlite;

pub use control::ControlStore;
pub use data::DataStore;
pub use domain::DomainStore;
pub use error::{ErrorClass, StoreError, StoreResult};
pub use limits::LimitStore;
pub use runs::{RunStore, StepTx};

use crate::types::{
    Enqueued, FetchedJob, JobFilter, JobId, JobRecord, Lease, NewJob, Outcome, StateCount,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// What a backend can and cannot do, so callers never test "is this Postgres".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Other processes' enqueues wake this process's producers (Postgres LISTEN/NOTIFY).
    /// Without it, producers also poll.
    pub cross_process_notify: bool,
    /// Many worker processes on many machines may share the database.
    pub multi_node: bool,
    /// Backend name as it appears in benchmark output.
    pub name: &'static str,
}

pub use crate::types::{Affected, FetchCursor, FetchParams, KindDefaults, Rescue};

/// The storage interface of the durable queue (and, through [`RunStore`] and [`DomainStore`],
/// of workflow runs and of the module lifecycle).
#[async_trait]
pub trait JobStore:
    JobAdmin + ControlStore + LimitStore + RunStore + DomainStore + DataStore + Send + Sync + 'static
{
    /// Static facts about the backend.
    fn capabilities(&self) -> Capabilities;

    /// Apply the schema in `migrations/<backend>/`; idempotent.
    async fn migrate(&self) -> StoreResult<()>;

    /// Insert jobs in one statement. A job whose unique key is held by another job that is
    /// not completed or cancelled is not inserted; that job's id is returned instead. A dead
    /// job keeps its key on purpose: the operator retries or discards it, rather than a
    /// second copy slipping past the dead-letter queue.
    async fn jobs_insert_many(&self, jobs: &[NewJob]) -> StoreResult<Vec<Enqueued>>;

    /// Lease up to `limit` available jobs of a queue to a worker, fairest first; none while
    /// the queue is paused.
    async fn jobs_fetch_available(&self, params: FetchParams<'_>) -> StoreResult<Vec<FetchedJob>>;

    /// Apply attempt outcomes. Each is fenced on (id, attempt, worker); the leases that still
    /// matched are returned, the others (stale workers) changed nothing.
    async fn jobs_apply_outcomes(
        &self,
        worker: &str,
        outcomes: &[Outcome],
    ) -> StoreResult<Vec<Lease>>;

    /// Extend the leases a worker still holds; returns those it still holds. A lease missing
    /// from the answer was rescued or cancelled: the worker must stop that attempt.
    async fn jobs_heartbeat_many(
        &self,
        worker: &str,
        leases: &[Lease],
        lease_for: Duration,
    ) -> StoreResult<Vec<Lease>>;

    /// Lease expiry and due times are judged by the database's clock (one clock for all nodes).
    ///
    /// Make running jobs whose lease expired available again (or dead when out of
    /// attempts), recording the lost attempt.
    ///
    /// A rescue that waited longer than `stalled_after` for the database's writer (SQLite:
    /// another transaction, maybe another process's long step, held the one writer lock;
    /// PostgreSQL: the bookkeeping pool had no free connection) rescues nothing: the live
    /// workers' heartbeats waited for that same writer, so their leases may look expired
    /// though they are not. It answers [`Rescue::WriterStalled`] and the caller gives them
    /// time to extend their leases first.
    async fn jobs_rescue_expired(
        &self,
        limit: usize,
        stalled_after: Duration,
    ) -> StoreResult<Rescue>;

    /// Move scheduled and retryable jobs whose `run_at` has come to available. Returns the
    /// queues that got jobs.
    async fn jobs_stage_due(&self, limit: usize) -> StoreResult<Vec<String>>;

    /// Subscribe to "a job became available in queue X" signals.
    fn subscribe(&self) -> broadcast::Receiver<String>;

    /// The offers of this process's idle producers, which enqueues hand jobs to
    /// (see [`handoff`]).
    fn offers(&self) -> &handoff::Offers;

    /// Insert one job already leased to `worker`, as a fetch leaves it (running, attempt 1),
    /// unless its queue is paused (`None`): the in-process hand-off's write.
    async fn jobs_insert_leased(
        &self,
        job: &NewJob,
        worker: &str,
        lease_for: Duration,
    ) -> StoreResult<Option<FetchedJob>>;
}

/// What operators and maintenance do with jobs: read them, act on them in bulk, prune them.
/// Written once for both backends (`store/sql/jobs.rs`).
#[async_trait]
pub trait JobAdmin: Send + Sync {
    /// The number of the last migration applied to this database (0 when it was never
    /// migrated); this build writes [`SCHEMA_VERSION`].
    async fn schema_version(&self) -> StoreResult<i64>;

    /// Delete completed jobs finished before `completed_before` and dead or cancelled jobs
    /// finished before `dead_before`.
    async fn jobs_prune(
        &self,
        completed_before: DateTime<Utc>,
        dead_before: DateTime<Utc>,
    ) -> StoreResult<u64>;

    /// Vacuum steward's tables that carry at least `min_dead` dead row versions (and at least
    /// a tenth of their live rows): every job leaves two in `steward_jobs` (its fetch and its
    /// acknowledgement), 40,000 a second at full speed, and a server's autovacuum may be off
    /// or, at its defaults, slower than that. Returns how many tables were vacuumed (SQLite
    /// reuses the pages of deleted rows and has nothing to do: 0).
    async fn tables_vacuum(&self, min_dead: u64) -> StoreResult<u64>;

    /// Publish the job kinds' defaults as `jobs/*.toml` declares them, so that an enqueue
    /// from SQL (`steward_enqueue`, PostgreSQL) gives a kind the queue, priority, attempts
    /// and timeout the Rust client and the API give it. Returns how many kinds changed.
    async fn kinds_publish(&self, kinds: &[KindDefaults]) -> StoreResult<u64>;

    /// One job with every attempt.
    async fn job_get(&self, id: JobId) -> StoreResult<Option<JobRecord>>;

    /// Jobs matching a filter, by id.
    async fn jobs_list(&self, filter: &JobFilter) -> StoreResult<Vec<JobRecord>>;

    /// How many jobs match a filter (its paging and limit aside), counting at most `cap`:
    /// listings show "more than N" rather than count a million rows.
    async fn jobs_count(&self, filter: &JobFilter, cap: i64) -> StoreResult<i64>;

    /// Make dead, cancelled, retryable or scheduled jobs available now (granting one more
    /// attempt where they had none left).
    async fn jobs_retry(&self, filter: &JobFilter) -> StoreResult<Affected>;

    /// Cancel queued or running jobs; a running job's worker loses its lease.
    async fn jobs_cancel(&self, filter: &JobFilter) -> StoreResult<Affected>;

    /// Drop dead jobs from the dead-letter queue (kept as cancelled until pruned).
    async fn jobs_discard(&self, filter: &JobFilter) -> StoreResult<Affected>;

    /// Job counts per queue and state.
    async fn jobs_count_by_state(&self) -> StoreResult<Vec<StateCount>>;

    /// Per minute over the last `minutes` minutes (of one queue, or all), oldest first, minutes
    /// without any left out: jobs completed, and jobs that failed (retryable or dead, by the
    /// minute their last attempt ended): the dashboard's throughput charts.
    async fn jobs_per_minute(
        &self,
        queue: Option<&str>,
        minutes: i64,
    ) -> StoreResult<Vec<crate::types::MinuteCount>>;

    /// Per queue, how long its oldest available job has been due (the queue's latency); per
    /// worker, the running jobs it holds; the leaderships held now.
    async fn runtime_gauges(&self) -> StoreResult<crate::types::RuntimeGauges>;

    /// Probe for crash tests and the demo: record that `worker` started job `job_id` at
    /// `started_at` (its handler's clock, so tests can order starts against other events).
    async fn ledger_append(
        &self,
        job_id: JobId,
        worker: &str,
        started_at: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// Every ledger row as (job id, worker that wrote it), in order of appending
    /// (duplicates included).
    async fn ledger_entries(&self) -> StoreResult<Vec<(JobId, String)>>;

    /// Check the database answers.
    async fn ping(&self) -> StoreResult<()>;

    /// Take or keep the leadership `name` for `holder` for `ttl` (by the database's clock):
    /// `true` when `holder` leads now (it did, or the last leader's lease expired).
    async fn leader_elect(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> StoreResult<bool>;

    /// Give the leadership up (at shutdown), so another node takes it at once.
    async fn leader_resign(&self, name: &str, holder: &str) -> StoreResult<()>;
}

/// A connection on which jobs can be enqueued inside the caller's own transaction: a
/// `sqlx::PgConnection` or a `sqlx::SqliteConnection` (a `Transaction` derefs to one).
#[async_trait]
pub trait TransactionalEnqueue: Send {
    /// Insert jobs on this connection; see [`JobStore::jobs_insert_many`].
    async fn insert_jobs(&mut self, jobs: &[NewJob]) -> StoreResult<Vec<Enqueued>>;
}

#[async_trait]
impl TransactionalEnqueue for sqlx::PgConnection {
    async fn insert_jobs(&mut self, jobs: &[NewJob]) -> StoreResult<Vec<Enqueued>> {
        postgres::insert_on(self, jobs).await
    }
}

#[async_trait]
impl TransactionalEnqueue for sqlx::SqliteConnection {
    async fn insert_jobs(&mut self, jobs: &[NewJob]) -> StoreResult<Vec<Enqueued>> {
        sqlite::insert_on(self, jobs).await
    }
}

/// The schema this build writes and expects: the number of its last migration, the same on
/// both backends (a unit test ties it to `migrations/`).
pub const SCHEMA_VERSION: i64 = 25;

/// A shared handle to whichever store `DATABASE_URL` selected.
pub type SharedStore = Arc<dyn JobStore>;

/// Open the store a URL names (`postgres://…` or `sqlite://…`) without migrating it.
pub async fn connect(url: &str) -> StoreResult<SharedStore> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::connect(url, None).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::connect(url).await?))
    } else {
        Err(StoreError::InvalidInput(format!(
            "DATABASE_URL must start with postgres:// or sqlite:, got `{}`",
            crate::secrets::redact(url)
        )))
    }
}
