//! Pausing a queue on every node, and the registry of worker processes.
//!
//! A pause is a row of `steward_queue_states` carrying the next control version. Three gates
//! keep a paused queue's jobs from starting:
//! 1. the fetch statement passes over a paused queue (any fetch that begins after the pause
//!    committed leases nothing);
//! 2. each process's producer stops fetching the queue while its gate is closed;
//! 3. a job leased before the process learnt of the pause (by a fetch in flight, or waiting in
//!    the worker's buffer) is released at handler start without using an attempt.
//!
//! Each process's [`Watcher`] reads the states every poll interval, sets its gates, then
//! writes the version it has applied into its row of `steward_workers` (its beat). [`set_paused`]
//! returns once every live worker process has applied the pause: from then on no job of the
//! queue starts on any node. A process whose row expired (killed, partitioned) is not waited
//! for: it starts nothing either, since its leases expire with it and gate 1 holds for its fetches.

use crate::store::control::{QueueState, WorkerBeat, WorkerQueue};
use crate::store::{SharedStore, StoreError, StoreResult};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Each queue this process works: closed (`true`) while the queue is paused.
#[derive(Debug)]
pub(crate) struct Gates {
    queues: HashMap<String, watch::Sender<bool>>,
}

impl Gates {
    pub fn new<'a>(queues: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            queues: queues
                .into_iter()
                .map(|q| (q.to_string(), watch::Sender::new(false)))
                .collect(),
        }
    }

    /// The gate of `queue` (one this process works; an unknown queue is always open).
    pub fn watch(&self, queue: &str) -> watch::Receiver<bool> {
        match self.queues.get(queue) {
            Some(gate) => gate.subscribe(),
            None => watch::Sender::new(false).subscribe(),
        }
    }

    /// Close the gates of paused queues and open the others; the highest version seen.
    fn apply(&self, states: &[QueueState]) -> i64 {
        for (queue, gate) in &self.queues {
            let paused = states.iter().any(|s| &s.queue == queue && s.paused);
            gate.send_if_modified(|closed| std::mem::replace(closed, paused) != paused);
        }
        states.iter().map(|s| s.version).max().unwrap_or(0)
    }
}

/// Wait while a gate is closed; false when `stop` came first.
pub(crate) async fn wait_open(gate: &mut watch::Receiver<bool>, stop: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        _ = stop.cancelled() => false,
        open = gate.wait_for(|closed| !*closed) => open.is_ok(),
    }
}

/// One process's registration and its gates' source: see the module documentation.
pub(crate) struct Watcher {
    pub store: SharedStore,
    pub worker_id: String,
    pub queues: Vec<WorkerQueue>,
    pub gates: std::sync::Arc<Gates>,
    pub running: Box<dyn Fn() -> usize + Send + Sync>,
    /// How often it reads the queue states.
    pub poll: Duration,
    /// How often it beats when nothing changed.
    pub beat_every: Duration,
    /// How long its row counts as alive after a beat.
    pub ttl: Duration,
}

impl Watcher {
    /// Read the states once and set the gates (before the producers start).
    pub async fn prime(&self) -> i64 {
        match self.store.queue_states().await {
            Ok(states) => self.gates.apply(&states),
            Err(err) => {
                tracing::warn!(error = %err, "could not read the queue states");
                0
            }
        }
    }

    pub async fn run(self, mut applied: i64, stop: CancellationToken) {
        let host = hostname();
        let pid = std::process::id();
        let mut written: Option<(i64, Instant)> = None;
        loop {
            match self.store.queue_states().await {
                Ok(states) => applied = applied.max(self.gates.apply(&states)),
                Err(err) => tracing::warn!(error = %err, "could not read the queue states"),
            }
            let due = match written {
                Some((version, at)) => version != applied || at.elapsed() >= self.beat_every,
                None => true,
            };
            if due {
                let beat = WorkerBeat {
                    id: &self.worker_id,
                    host: &host,
                    pid,
                    queues: &self.queues,
                    running: (self.running)(),
                    control_seen: applied,
                    ttl: self.ttl,
                };
                match self.store.worker_beat(&beat).await {
                    Ok(()) => written = Some((applied, Instant::now())),
                    Err(err) => tracing::warn!(error = %err, "worker beat failed"),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.poll) => {}
                _ = stop.cancelled() => break,
            }
        }
        if let Err(err) = self.store.worker_leave(&self.worker_id).await {
            tracing::warn!(error = %err, "could not remove this worker's registration");
        }
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// What a pause or resume did, and which worker processes have applied it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ControlReport {
    pub queue: String,
    pub paused: bool,
    /// False when the queue already was in that state.
    pub changed: bool,
    pub version: i64,
    /// Live worker processes that have applied this state.
    pub applied_by: Vec<String>,
    /// Live worker processes that had not applied it when the wait ended.
    pub pending: Vec<String>,
}

impl ControlReport {
    /// Every live worker process applied it.
    pub fn acknowledged(&self) -> bool {
        self.pending.is_empty()
    }
}

/// How long a pause or resume call waits for every live worker to apply it by default (more
/// than a lease, so that a killed worker's row expires within the wait).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(15);

/// Pause (`paused`) or resume `queue` as `by`, then wait up to `wait` until every live worker
/// process has applied it. The only way queues are paused: the API, the CLI and the dashboard
/// call this.
pub async fn set_paused(
    store: &SharedStore,
    queue: &str,
    paused: bool,
    by: &str,
    wait: Duration,
) -> StoreResult<ControlReport> {
    if !crate::kinds::valid_name(queue) {
        return Err(StoreError::InvalidInput(format!(
            "queue `{queue}` must be 1-64 of a-z, 0-9, _ and -, starting with a letter"
        )));
    }
    let change = store.queue_set_paused(queue, paused, by).await?;
    let deadline = Instant::now() + wait;
    loop {
        let workers = store.workers_list().await?;
        let (applied_by, pending): (Vec<_>, Vec<_>) = workers
            .into_iter()
            .filter(|w| w.alive)
            .partition(|w| w.control_seen >= change.version);
        if pending.is_empty() || Instant::now() >= deadline {
            return Ok(ControlReport {
                queue: queue.to_string(),
                paused,
                changed: change.changed,
                version: change.version,
                applied_by: applied_by.into_iter().map(|w| w.id).collect(),
                pending: pending.into_iter().map(|w| w.id).collect(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
