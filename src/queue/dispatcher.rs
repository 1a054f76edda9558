//! The innermost service: run the handler of a job's kind, bounded by the job's timeout and
//! its stop switch.

use super::inflight::InFlight;
use super::registry::{JobContext, JobError, Registry};
use crate::store::SharedStore;
use crate::types::FetchedJob;
use apalis_core::task::Task;
use futures::FutureExt;
use futures::future::BoxFuture;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower_service::Service;
use tracing::Instrument;

/// Dispatches a job to its handler.
#[derive(Clone)]
pub(crate) struct Dispatcher {
    pub registry: Arc<Registry>,
    pub store: SharedStore,
    pub worker: Arc<str>,
    pub inflight: InFlight,
}

impl Service<Task<FetchedJob>> for Dispatcher {
    type Response = ();
    type Error = JobError;
    type Future = BoxFuture<'static, Result<(), JobError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, task: Task<FetchedJob>) -> Self::Future {
        let job = task.args;
        let this = self.clone();
        let span = tracing::info_span!(
            "steward.job.run",
            trace_id = %job.trace_id(),
            job_id = job.id,
            kind = %job.kind,
            attempt = job.attempt,
            tenant_id = %job.tenant,
        );
        let (queue, kind) = (job.queue.clone(), job.kind.clone());
        Box::pin(
            async move {
                let started = std::time::Instant::now();
                let result = this.dispatch(job).await;
                let outcome = match &result {
                    Ok(()) => "completed",
                    Err(JobError::Interrupted(_)) => "interrupted",
                    Err(JobError::Fatal(_)) => "fatal",
                    Err(JobError::NotHere(_)) => "released",
                    Err(JobError::Snooze(_)) => "snoozed",
                    Err(_) => "failed",
                };
                metrics::counter!("steward_job_attempts_total",
                    "queue" => queue.clone(), "kind" => kind.clone(), "outcome" => outcome)
                .increment(1);
                metrics::histogram!("steward_job_duration_seconds", "queue" => queue, "kind" => kind)
                    .record(started.elapsed().as_secs_f64());
                result
            }
            .instrument(span),
        )
    }
}

impl Dispatcher {
    /// Run one attempt: the handler under the job's timeout and stop switch.
    async fn dispatch(self, job: FetchedJob) -> Result<(), JobError> {
        let Some(switch) = self.inflight.switch(job.lease()) else {
            return Err(JobError::Interrupted("lease no longer held".into()));
        };
        let timeout = Duration::from_millis(job.timeout_ms.max(1) as u64);
        let ctx = JobContext {
            job,
            worker: Arc::clone(&self.worker),
            store: Arc::clone(&self.store),
            cancel: switch.cancel.clone(),
            self_ack: switch.self_ack.clone(),
        };
        if switch.cancel.is_cancelled() {
            return Err(JobError::Interrupted(switch.reason()));
        }
        // A panicking handler fails its attempt like an error; it must not take the
        // worker (and every job it holds) down with it.
        let handler = AssertUnwindSafe(self.registry.start(ctx)?).catch_unwind();
        tokio::select! {
            biased;
            _ = switch.cancel.cancelled() => Err(JobError::Interrupted(switch.reason())),
            result = tokio::time::timeout(timeout, handler) => match result {
                Ok(Ok(result)) => result,
                Ok(Err(panic)) => Err(JobError::Retryable(format!("handler panicked: {}", panic_message(&*panic)))),
                Err(_) => Err(JobError::Retryable(format!("timed out after {} ms", timeout.as_millis()))),
            },
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-text panic payload".into()
    }
}
