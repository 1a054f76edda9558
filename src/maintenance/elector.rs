//! The elector: one node leads, and only the leader runs the periodic services (cron, the run
//! sweeper, the reconciler, rescue, staging, pruning), as River's elector does. Leadership is
//! a row with a lease (`steward_leaders`, by the database's clock) that the leader renews every
//! third of the lease; when the leader dies its lease runs out and another node takes over
//! within one lease. At shutdown the leader resigns, so the next one takes over at once. A
//! node that cannot reach the database steps down: it cannot know it still leads.

use crate::store::SharedStore;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The leadership every periodic service of a process shares.
/// The leadership the periodic services run under.
pub const NAME: &str = "steward";

/// Whether this process leads now, as its elector last saw it.
#[derive(Debug, Clone, Default)]
pub struct Leadership(Arc<AtomicBool>);

impl Leadership {
    /// Leading, for a process that runs its services unconditionally (tests, one-off tools).
    pub fn always() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }

    pub fn is_leader(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self, leading: bool) -> bool {
        self.0.swap(leading, Ordering::AcqRel) != leading
    }
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
        let mut ticker = tokio::time::interval(ttl / 3);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.cancelled() => break,
            }
            let leading = match store.leader_elect(NAME, &holder, ttl).await {
                Ok(leading) => leading,
                Err(err) => {
                    tracing::warn!(error = %err, "leader election failed; not leading");
                    false
                }
            };
            if shared.set(leading) {
                tracing::info!(holder = %holder, leading, "leadership changed");
            }
        }
        if shared.is_leader() {
            shared.set(false);
            if let Err(err) = store.leader_resign(NAME, &holder).await {
                tracing::warn!(error = %err, "could not resign the leadership");
            }
        }
    });
    (leadership, handle)
}
