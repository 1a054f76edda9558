//! The completer: writes attempt outcomes in batches, concurrently with fetching.
//!
//! Whatever piled up while the previous batch was being written goes in the next one, so the
//! batch size follows the load by itself. Transient database errors (a restart, a lost
//! connection) are retried with backoff while the leases stay heartbeated. A batch the
//! database refuses for good is split and written outcome by outcome, so one bad outcome
//! cannot take the others with it; an outcome that still cannot be written is dropped and its
//! job is rescued when its lease expires: at-least-once, nothing lost.

use super::inflight::InFlight;
use crate::store::{SharedStore, StoreError};
use crate::types::Outcome;
use backon::{ExponentialBuilder, Retryable};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const MAX_BATCH: usize = 5000;

/// The sending side, held by the ack layer and the backends.
#[derive(Clone)]
pub(crate) struct OutcomeSender(mpsc::UnboundedSender<Outcome>);

impl OutcomeSender {
    pub fn send(&self, outcome: Outcome) {
        if self.0.send(outcome).is_err() {
            tracing::error!("completer stopped; outcome left to the rescuer");
        }
    }
}

/// Start the completer; it ends once every sender is dropped and the last batch is written.
pub(crate) fn spawn(
    store: SharedStore,
    worker: Arc<str>,
    inflight: InFlight,
) -> (OutcomeSender, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
    let handle = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            match write(&store, &worker, &batch).await {
                Ok(applied) if applied < batch.len() => tracing::info!(
                    stale = batch.len() - applied,
                    "outcomes of attempts this worker no longer held were ignored (fenced)"
                ),
                Ok(_) => {}
                Err(err) if !err.is_transient() && batch.len() > 1 => {
                    tracing::warn!(error = %err, "a batch of outcomes was refused; writing them one by one");
                    for outcome in &batch {
                        if let Err(err) =
                            write(&store, &worker, std::slice::from_ref(outcome)).await
                        {
                            tracing::error!(error = %err, job_id = outcome.lease().id,
                                "outcome could not be written; the job will be rescued");
                        }
                    }
                }
                Err(err) => tracing::error!(error = %err, count = batch.len(),
                    "outcomes could not be written; their jobs will be rescued"),
            }
            for outcome in &batch {
                inflight.remove(outcome.lease());
            }
            batch.clear();
        }
    });
    (OutcomeSender(tx), handle)
}

/// One write, retrying transient errors for several minutes (a database restart).
async fn write(store: &SharedStore, worker: &str, batch: &[Outcome]) -> Result<usize, StoreError> {
    let attempt = || async { store.jobs_apply_outcomes(worker, batch).await };
    attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(50))
                .with_max_delay(Duration::from_secs(2))
                .with_max_times(200),
        )
        .when(StoreError::is_transient)
        .notify(
            |err, wait| tracing::warn!(error = %err, ?wait, "writing outcomes failed; retrying"),
        )
        .await
        .map(|applied| applied.len())
}
