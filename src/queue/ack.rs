//! The backend's middleware: turn the end of each attempt into an [`Outcome`] for the
//! completer, and give the job's concurrency permit back.

use super::completer::OutcomeSender;
use super::inflight::InFlight;
use super::registry::JobError;
use crate::kinds::KindCatalog;
use crate::types::{FetchedJob, Outcome};
use apalis_core::error::BoxDynError;
use apalis_core::task::Task;
use chrono::Utc;
use futures::future::BoxFuture;
use std::sync::Arc;
use tokio::sync::watch;

/// How long a job whose kind this worker has no handler for stays away from it (released,
/// not counted as an attempt), so that a worker with the handler takes it first.
pub(crate) const NOT_HERE_DELAY: std::time::Duration = std::time::Duration::from_secs(30);
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// Installed by [`super::backend::QueueBackend`] around every worker's service.
#[derive(Clone)]
pub(crate) struct AckLayer {
    pub outcomes: OutcomeSender,
    /// For the circuit breakers' records (see [`super::limits`]).
    pub store: crate::store::SharedStore,
    pub inflight: InFlight,
    pub kinds: Arc<KindCatalog>,
    /// The queue's gate: closed while it is paused (see [`super::control`]).
    pub gate: watch::Receiver<bool>,
}

impl<S> Layer<S> for AckLayer {
    type Service = AckService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AckService {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`AckLayer`].
#[derive(Clone)]
pub(crate) struct AckService<S> {
    inner: S,
    layer: AckLayer,
}

impl<S> Service<Task<FetchedJob>> for AckService<S>
where
    S: Service<Task<FetchedJob>> + Send,
    S::Future: Send + 'static,
    S::Error: Into<BoxDynError>,
{
    type Response = ();
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<(), BoxDynError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<FetchedJob>) -> Self::Future {
        let job = task.args.clone();
        // The queue was paused after this job was leased: it does not start; it goes back
        // unstarted, without using an attempt.
        if *self.layer.gate.borrow() {
            let lease = job.lease();
            self.layer.inflight.handler_done(lease);
            self.layer.outcomes.send(Outcome::Released {
                lease,
                retry_at: None,
            });
            return Box::pin(async { Ok(()) });
        }
        let started_at = Utc::now();
        let run = self.inner.call(task);
        let layer = self.layer.clone();
        // If this future is dropped before the attempt ends (the worker itself went away),
        // the guard still reports the attempt, so its lease and permit are not stranded.
        let mut guard = AbandonGuard {
            layer: Some(layer.clone()),
            job: job.clone(),
            started_at,
        };
        Box::pin(async move {
            let result = run.await.map_err(|err| {
                let err: BoxDynError = err.into();
                match err.downcast::<JobError>() {
                    Ok(job_err) => *job_err,
                    Err(other) => JobError::Retryable(other.to_string()),
                }
            });
            // (The handler's response is not kept: it need not be `Send`.)
            let result = result.map(|_| ());
            let finished_at = Utc::now();
            let lease = job.lease();
            // Under a circuit breaker, the attempt's end is recorded: a success closes it, a
            // failure counts towards opening it (the failed attempt counts for the job too).
            match &result {
                Ok(_) => {
                    super::limits::record_breaker(&layer.store, &layer.kinds, &job, true).await
                }
                Err(JobError::Retryable(_)) => {
                    super::limits::record_breaker(&layer.store, &layer.kinds, &job, false).await
                }
                Err(_) => {}
            }
            let outcome = match result {
                Ok(_) if layer.inflight.acknowledged(lease) => None,
                Ok(_) => Some(Outcome::Completed { lease, finished_at }),
                Err(JobError::NotHere(why)) => {
                    tracing::warn!(job_id = job.id, kind = %job.kind, "{why}: released for {}s",
                        NOT_HERE_DELAY.as_secs());
                    let retry_at = finished_at
                        + chrono::Duration::from_std(NOT_HERE_DELAY).unwrap_or_default();
                    Some(Outcome::Released {
                        lease,
                        retry_at: Some(retry_at),
                    })
                }
                Err(JobError::Snooze(delay)) => {
                    tracing::debug!(job_id = job.id, kind = %job.kind, ?delay, "snoozed");
                    let retry_at =
                        finished_at + chrono::Duration::from_std(delay).unwrap_or_default();
                    Some(Outcome::Released {
                        lease,
                        retry_at: Some(retry_at),
                    })
                }
                Err(err) => {
                    let retry_at = match &err {
                        JobError::Fatal(_) | JobError::NotHere(_) | JobError::Snooze(_) => None,
                        // Not the job's fault (shutdown): run again now. A lost lease is
                        // somebody else's attempt now; the fenced write below changes nothing.
                        JobError::Interrupted(_) => Some(finished_at),
                        JobError::Retryable(_) if job.attempt >= job.max_attempts => None,
                        JobError::Retryable(_) => {
                            let backoff = layer
                                .kinds
                                .get(&job.kind)
                                .map(|k| k.backoff.clone())
                                .unwrap_or_default();
                            let delay = backoff.delay_after(job.attempt);
                            Some(
                                finished_at + chrono::Duration::from_std(delay).unwrap_or_default(),
                            )
                        }
                    };
                    tracing::warn!(trace_id = %job.trace_id(), job_id = job.id, kind = %job.kind, attempt = job.attempt,
                        tenant_id = %job.tenant, error = %err, dead = retry_at.is_none(), "attempt failed");
                    Some(Outcome::Failed {
                        lease,
                        error: err.to_string(),
                        started_at,
                        finished_at,
                        retry_at,
                    })
                }
            };
            guard.disarm();
            if let Some(outcome) = outcome {
                // The lease stays held (heartbeated) until the completer has written this.
                layer.inflight.handler_done(lease);
                layer.outcomes.send(outcome);
            } else {
                layer.inflight.remove(lease);
            }
            Ok(())
        })
    }
}

struct AbandonGuard {
    layer: Option<AckLayer>,
    job: FetchedJob,
    started_at: chrono::DateTime<Utc>,
}

impl AbandonGuard {
    /// The attempt ended normally; nothing to report on drop.
    fn disarm(&mut self) {
        self.layer = None;
    }
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if let Some(layer) = self.layer.take() {
            let lease = self.job.lease();
            let now = Utc::now();
            layer.inflight.handler_done(lease);
            layer.outcomes.send(Outcome::Failed {
                lease,
                error: "attempt abandoned: the worker stopped before it ended".into(),
                started_at: self.started_at,
                finished_at: now,
                retry_at: Some(now),
            });
        }
    }
}
