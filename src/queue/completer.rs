//! The completer: writes attempt outcomes in batches, concurrently with fetching.
//!
//! Whatever piled up while the previous batch was being written goes in the next one, so the
//! batch size follows the load by itself. Transient database errors (a restart, a lost
//! connection) are retried with backoff; an outcome that can never be written is dropped,
//! and its job is rescued when its lease expires: at-least-once, nothing lost.

use crate::store::SharedStore;
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
) -> (OutcomeSender, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
    let handle = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let write = || async { store.jobs_apply_outcomes(&worker, &batch).await };
            let result = write
                .retry(
                    ExponentialBuilder::default()
                        .with_min_delay(Duration::from_millis(50))
                        .with_max_delay(Duration::from_secs(2))
                        .with_max_times(30),
                )
                .when(|e| e.is_transient())
                .notify(|err, wait| tracing::warn!(error = %err, ?wait, "writing outcomes failed; retrying"))
                .await;
            match result {
                Ok(applied) if applied.len() < batch.len() => tracing::info!(
                    stale = batch.len() - applied.len(),
                    "outcomes of attempts this worker no longer held were ignored (fenced)"
                ),
                Ok(_) => {}
                Err(err) => tracing::error!(error = %err, count = batch.len(),
                    "outcomes could not be written; their jobs will be rescued"),
            }
            batch.clear();
        }
    });
    (OutcomeSender(tx), handle)
}
