//! The elector: one node leads, and only the leader runs the periodic services (cron, the run
//! sweeper, the reconciler, rescue, staging, pruning), as River's elector does. Leadership is
//! a row with a lease (`steward_leaders`, by the database's clock) of two thirds of `ttl`, that
//! every node asks for every quarter of `ttl`: when the leader dies its row expires within
//! two thirds of `ttl` and another node takes it at its next ask, so the hand-over takes at
//! most `ttl` (2/3 + 1/4). At shutdown the leader resigns, so the next one takes over at once.
//! A node that cannot reach the database steps down: it cannot know it still leads; and it
//! stops leading on its own clock when its last granted lease ends, even while an ask hangs,
//! so two nodes never act as leader at once.

use crate::store::SharedStore;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The leadership every periodic service of a process shares.
/// The leadership the periodic services run under.
pub const NAME: &str = "steward";

/// Whether this process leads now, as its elector last saw it.
#[derive(Debug, Clone, Default)]
pub struct Leadership {
    leading: Arc<AtomicBool>,
    /// Until when the last granted lease lasts by this process's clock (`None`: no end).
    until: Arc<Mutex<Option<Instant>>>,
    /// When this process's elector last failed to reach the database.
    failed_at: Arc<Mutex<Option<Instant>>>,
}

impl Leadership {
    /// Leading, for a process that runs its services unconditionally (tests, one-off tools).
    pub fn always() -> Self {
        Self {
            leading: Arc::new(AtomicBool::new(true)),
            until: Arc::default(),
            failed_at: Arc::default(),
        }
    }

    /// Did this process's elector fail to reach the database within the last `window`? Every
    /// node's elector asks every quarter lease, so every node running one sees an outage,
    /// whether it led during it or not.
    pub fn saw_outage_within(&self, window: Duration) -> bool {
        self.failed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() <= window)
    }

    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::Acquire)
            && self
                .until
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_none_or(|until| Instant::now() < until)
    }

    /// Record the elector's answer; true when it changed whether this process leads.
    fn set(&self, leading: bool, until: Option<Instant>) -> bool {
        *self.until.lock().unwrap_or_else(PoisonError::into_inner) = until;
        self.leading.swap(leading, Ordering::AcqRel) != leading
    }
}

/// The lease a leader holds: two thirds of `ttl` (see the module docs).
pub fn lease_of(ttl: Duration) -> Duration {
    ttl * 2 / 3
}

/// Elect `holder` (this process's worker id) for leases of `ttl`, until `stop`.
pub fn spawn(
    store: SharedStore,
    holder: String,
    ttl: Duration,
    stop: CancellationToken,
) -> (Leadership, tokio::task::JoinHandle<()>) {
    let leadership = Leadership::default();
    let shared = leadership.clone();
    let handle = tokio::spawn(async move {
        let lease = lease_of(ttl);
        let mut ticker = tokio::time::interval(ttl / 4);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.cancelled() => break,
            }
            // The lease runs from the database's now, which is after this instant.
            let asked = Instant::now();
            let leading = match store.leader_elect(NAME, &holder, lease).await {
                Ok(leading) => leading,
                Err(err) => {
                    tracing::warn!(error = %err, "leader election failed; not leading");
                    *shared
                        .failed_at
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
                    false
                }
            };
            if shared.set(leading, leading.then_some(asked + lease)) {
                tracing::info!(holder = %holder, leading, "leadership changed");
            }
        }
        if shared.is_leader() {
            shared.set(false, None);
            if let Err(err) = store.leader_resign(NAME, &holder).await {
                tracing::warn!(error = %err, "could not resign the leadership");
            }
        }
    });
    (leadership, handle)
}
