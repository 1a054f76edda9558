//! What operators see of queues: jobs per state, latency, whether the queue is paused, and the
//! worker processes that work it. One read model for the API, the CLI and the dashboard.

use crate::store::control::WorkerRecord;
use crate::store::{SharedStore, StoreResult};
use crate::types::JobState;
use serde::Serialize;
use std::collections::BTreeMap;

/// One queue now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct QueueSummary {
    pub queue: String,
    pub paused: bool,
    /// Jobs per state, every state listed (zeros too).
    pub jobs: BTreeMap<String, i64>,
    /// How long, in milliseconds, the oldest available job has been due (0: none waits).
    pub oldest_available_ms: i64,
    /// Live worker processes that work this queue.
    pub live_workers: usize,
    /// Their concurrency for this queue, summed: how many of its jobs may run at once.
    pub concurrency: usize,
}

impl QueueSummary {
    fn new(queue: &str) -> Self {
        Self {
            queue: queue.to_string(),
            paused: false,
            jobs: JobState::ALL
                .iter()
                .map(|s| (s.as_str().to_string(), 0))
                .collect(),
            oldest_available_ms: 0,
            live_workers: 0,
            concurrency: 0,
        }
    }

    /// Jobs in `state`.
    pub fn count(&self, state: JobState) -> i64 {
        self.jobs.get(state.as_str()).copied().unwrap_or(0)
    }
}

/// Every queue that has jobs, was ever paused, or is worked by a live process, by name.
pub async fn summaries(store: &SharedStore) -> StoreResult<Vec<QueueSummary>> {
    let counts = store.jobs_count_by_state().await?;
    let gauges = store.runtime_gauges().await?;
    let states = store.queue_states().await?;
    let workers = store.workers_list().await?;
    let mut queues: BTreeMap<String, QueueSummary> = BTreeMap::new();
    fn entry<'a>(
        queues: &'a mut BTreeMap<String, QueueSummary>,
        name: &str,
    ) -> &'a mut QueueSummary {
        queues
            .entry(name.to_string())
            .or_insert_with(|| QueueSummary::new(name))
    }
    for count in &counts {
        *entry(&mut queues, &count.queue)
            .jobs
            .entry(count.state.as_str().to_string())
            .or_default() += count.count;
    }
    for (queue, ms) in &gauges.oldest_available_ms {
        entry(&mut queues, queue).oldest_available_ms = *ms;
    }
    for state in &states {
        entry(&mut queues, &state.queue).paused = state.paused;
    }
    for worker in workers.iter().filter(|w| w.alive) {
        for queue in &worker.queues {
            let summary = entry(&mut queues, &queue.name);
            summary.live_workers += 1;
            summary.concurrency += queue.concurrency;
        }
    }
    Ok(queues.into_values().collect())
}

/// One queue (a queue nobody knows reads as empty and running).
pub async fn summary(store: &SharedStore, queue: &str) -> StoreResult<QueueSummary> {
    Ok(summaries(store)
        .await?
        .into_iter()
        .find(|q| q.queue == queue)
        .unwrap_or_else(|| QueueSummary::new(queue)))
}

/// The live worker processes that work `queue`.
pub fn working(workers: &[WorkerRecord], queue: &str) -> Vec<WorkerRecord> {
    workers
        .iter()
        .filter(|w| w.alive && w.queues.iter().any(|q| q.name == queue))
        .cloned()
        .collect()
}
