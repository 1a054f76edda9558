//! The jobs a worker process holds: their leases, their stop switches, and the permits that
//! enforce each queue's concurrency limit.
//!
//! A job is held from its fetch until its outcome is written. When its handler ends, its
//! permit goes back at once (the queue may take the next job) but its lease stays held, and
//! heartbeated, until the completer has written the outcome: a slow or retried write never
//! lets the lease expire under a finished job.

use crate::types::Lease;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

struct Held {
    lease: Lease,
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
    /// How far the handler got acknowledging the job itself (a workflow step does).
    self_ack: SelfAck,
    /// `None` once the handler ended and the outcome waits for the completer.
    permit: Option<OwnedSemaphorePermit>,
    /// Held until the outcome is written: bounds how many finished jobs may wait for the
    /// completer, so a completer that falls behind slows fetching down instead of leaving
    /// ever more leases to heartbeat.
    _unwritten: OwnedSemaphorePermit,
}

/// Leases held by this process, across queues.
#[derive(Clone, Default)]
pub(crate) struct InFlight {
    held: Arc<Mutex<HashMap<i64, Held>>>,
}

/// A handler that acknowledges its own job in its transaction (a workflow step) says so:
/// first that it is committing (from then on the commit's fenced acknowledgement decides, and
/// the heartbeat no longer stops the attempt when it sees the row go), then that the commit
/// acknowledged the job (the runtime then writes no outcome).
#[derive(Clone, Default)]
pub(crate) struct SelfAck(Arc<AtomicU8>);

const COMMITTING: u8 = 1;
const ACKNOWLEDGED: u8 = 2;

impl SelfAck {
    pub fn committing(&self) {
        self.0.fetch_max(COMMITTING, Ordering::AcqRel);
    }
    pub fn acknowledged(&self) {
        self.0.store(ACKNOWLEDGED, Ordering::Release);
    }
    pub fn is_committing(&self) -> bool {
        self.0.load(Ordering::Acquire) >= COMMITTING
    }
    pub fn is_acknowledged(&self) -> bool {
        self.0.load(Ordering::Acquire) == ACKNOWLEDGED
    }
}

/// A stop switch for one attempt and why it was flipped.
#[derive(Clone)]
pub(crate) struct StopSwitch {
    pub cancel: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
    pub self_ack: SelfAck,
}

impl StopSwitch {
    pub fn reason(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| "stopped".into())
    }
}

impl InFlight {
    /// Record a leased job. If this process still held an older attempt of the same job (it
    /// was rescued from us and fetched again), that attempt is stopped first.
    pub fn insert(
        &self,
        lease: Lease,
        permit: OwnedSemaphorePermit,
        unwritten: OwnedSemaphorePermit,
    ) {
        let held = Held {
            lease,
            cancel: CancellationToken::new(),
            reason: Arc::new(Mutex::new(None)),
            self_ack: SelfAck::default(),
            permit: Some(permit),
            _unwritten: unwritten,
        };
        if let Some(old) = self.lock().insert(lease.id, held) {
            stop(&old, "lease lost: the job was rescued and fetched again");
        }
    }

    /// The stop switch of a held job.
    pub fn switch(&self, lease: Lease) -> Option<StopSwitch> {
        self.lock()
            .get(&lease.id)
            .filter(|h| h.lease == lease)
            .map(|h| StopSwitch {
                cancel: h.cancel.clone(),
                reason: Arc::clone(&h.reason),
                self_ack: h.self_ack.clone(),
            })
    }

    /// Whether the handler acknowledged the job itself (its outcome is already written).
    pub fn acknowledged(&self, lease: Lease) -> bool {
        self.lock()
            .get(&lease.id)
            .is_some_and(|h| h.lease == lease && h.self_ack.is_acknowledged())
    }

    /// The handler ended: give the concurrency permit back, keep the lease until the outcome
    /// is written.
    pub fn handler_done(&self, lease: Lease) {
        if let Some(held) = self.lock().get_mut(&lease.id).filter(|h| h.lease == lease) {
            held.permit = None;
        }
    }

    /// Forget a job: its outcome is written (or it was never started).
    pub fn remove(&self, lease: Lease) {
        let mut held = self.lock();
        if held.get(&lease.id).is_some_and(|h| h.lease == lease) {
            held.remove(&lease.id);
        }
    }

    /// Every lease held now (running, or waiting for its outcome to be written).
    pub fn leases(&self) -> Vec<Lease> {
        self.lock().values().map(|h| h.lease).collect()
    }

    /// Stop some attempts, saying why; returns how many were running. Attempts whose
    /// handler already ended, or is committing its own acknowledgement, are left alone.
    pub fn stop(&self, leases: &[Lease], reason: &str) -> usize {
        let held = self.lock();
        let mut stopped = 0;
        for lease in leases {
            if let Some(h) = held
                .get(&lease.id)
                .filter(|h| h.lease == *lease && h.permit.is_some() && !h.self_ack.is_committing())
            {
                stop(h, reason);
                stopped += 1;
            }
        }
        stopped
    }

    /// Stop every running attempt (end of the shutdown grace period).
    pub fn stop_all(&self, reason: &str) {
        for h in self.lock().values().filter(|h| h.permit.is_some()) {
            stop(h, reason);
        }
    }

    /// How many handlers are running or about to run.
    pub fn running(&self) -> usize {
        self.lock().values().filter(|h| h.permit.is_some()).count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn stop(held: &Held, reason: &str) {
    let mut slot = held.reason.lock().unwrap_or_else(PoisonError::into_inner);
    if slot.is_none() {
        *slot = Some(reason.to_string());
    }
    held.cancel.cancel();
}

/// How many jobs of a queue this process may hold at once, running or waiting for their
/// outcome to be written: twice its concurrency.
pub(crate) fn unwritten_slots(concurrency: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(concurrency.max(1) * 2))
}

/// A queue's concurrency limit in this process.
pub(crate) fn permits(limit: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(limit.max(1)))
}
