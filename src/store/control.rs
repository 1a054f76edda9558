//! Queue control and the worker registry: which queues are paused, which worker processes are
//! alive and what they have applied. Written once for both backends (`store/sql/control.rs`);
//! the rules around them (a pause returns once every live worker applied it) live in
//! [`crate::queue::control`].

use super::StoreResult;
use async_trait::async_trait;

pub use crate::types::control::{QueueChange, QueueState, WorkerBeat, WorkerQueue, WorkerRecord};

/// Pausing queues and registering worker processes.
#[async_trait]
pub trait ControlStore: Send + Sync {
    /// Mark `queue` paused (`paused`) or running again, as `by`, taking the next control
    /// version; a queue already in that state keeps its row (`changed: false`).
    async fn queue_set_paused(
        &self,
        queue: &str,
        paused: bool,
        by: &str,
    ) -> StoreResult<QueueChange>;

    /// Every queue that was ever paused, by name.
    async fn queue_states(&self) -> StoreResult<Vec<QueueState>>;

    /// Register a worker process or renew its row.
    async fn worker_beat(&self, beat: &WorkerBeat<'_>) -> StoreResult<()>;

    /// Remove a worker's row (graceful shutdown), and rows that expired a day ago.
    async fn worker_leave(&self, id: &str) -> StoreResult<()>;

    /// The registered worker processes, alive first, then by id.
    async fn workers_list(&self) -> StoreResult<Vec<WorkerRecord>>;
}
