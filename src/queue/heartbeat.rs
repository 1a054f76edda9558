//! The heartbeat: extends the leases this process holds, and stops attempts whose lease was
//! taken away (rescued after a stall, or cancelled by an operator).

use super::inflight::InFlight;
use crate::store::SharedStore;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub(crate) async fn run(
    store: SharedStore,
    worker: Arc<str>,
    inflight: InFlight,
    every: Duration,
    lease_for: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        let leases = inflight.leases();
        if leases.is_empty() {
            continue;
        }
        match store.jobs_heartbeat_many(&worker, &leases, lease_for).await {
            Ok(held) => {
                let held: HashSet<_> = held.into_iter().collect();
                let lost: Vec<_> = leases.into_iter().filter(|l| !held.contains(l)).collect();
                let stopped = inflight.stop(&lost, "lease lost: the job was cancelled or rescued");
                if stopped > 0 {
                    tracing::warn!(
                        count = stopped,
                        "leases lost (rescued or cancelled); stopped those attempts"
                    );
                }
            }
            Err(err) => tracing::warn!(error = %err, "heartbeat failed"),
        }
    }
}
