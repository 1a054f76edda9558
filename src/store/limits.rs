//! Flow control across processes: rate limits and global concurrency limits whose state lives
//! in the database, so one limit holds for every worker that shares it (every node on
//! PostgreSQL, every process on a SQLite file). Written once for both backends
//! (`store/sql/limits.rs`), which reads and writes that state; when a job may start is decided
//! by [`crate::limits::admission`]; which jobs a limit applies to, and what a refused job does,
//! by the runtime ([`crate::queue::limits`]).

use super::StoreResult;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::time::Duration;

pub use crate::types::limits::{Admission, Admitted, BreakerOutcome, BreakerRecord, LimitAsk};

/// Storage of flow-control state.
#[async_trait]
pub trait LimitStore: Send + Sync {
    /// Decide in one transaction when each of these running (just fetched) jobs may start.
    /// A rate-limited job takes its reserved start if it has one, else the key's next free
    /// start; a start within `horizon` is its `Start` (recorded as the attempt's start), a
    /// later one is reserved for it (`Later`). A concurrency-limited job starts only while
    /// fewer than the limit of the key's jobs run (`Full` otherwise, nothing reserved) and
    /// then holds a place until its attempt ends. Keys are locked in order, so concurrent
    /// admissions on many nodes never exceed a limit.
    /// A job passes a circuit breaker only while it is closed, or as the one probe once it
    /// has been open for its period (`Open` otherwise).
    async fn limits_admit(&self, asks: &[LimitAsk], horizon: Duration) -> StoreResult<Admitted>;

    /// Record how an attempt under a circuit breaker ended: a success closes the circuit; a
    /// failure counts, opens the circuit at its threshold, and opens it again when it was
    /// the probe. Returns until when the circuit is open now (`None`: closed).
    async fn breaker_record(
        &self,
        outcome: &BreakerOutcome<'_>,
    ) -> StoreResult<Option<DateTime<Utc>>>;

    /// Every circuit breaker that has seen a failure, by key.
    async fn breakers_list(&self) -> StoreResult<Vec<BreakerRecord>>;
}
