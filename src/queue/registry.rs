//! Handlers by job kind, and what a handler gets and returns.

use super::inflight::SelfAck;
use crate::store::{SharedStore, StoreError};
use crate::types::FetchedJob;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// How an attempt failed, which decides what happens next.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Try again after the kind's backoff (dead once attempts run out).
    #[error("{0}")]
    Retryable(String),
    /// Never try again: straight to the dead-letter queue.
    #[error("{0}")]
    Fatal(String),
    /// The attempt was stopped from outside (lease lost, shutdown); not the handler's fault.
    #[error("interrupted: {0}")]
    Interrupted(String),
    /// This worker has no handler for the job's kind (a rolling deploy: an older binary):
    /// the job goes back to its queue for a while, its attempt not counted, for a worker that
    /// has the handler.
    #[error("{0}")]
    NotHere(String),
    /// Not now: run again after this long, without using an attempt or recording a failure
    /// (what the job calls asked to wait, or a resource it needs is busy). Unlike a retry, a
    /// snooze never sends the job to the dead-letter queue.
    #[error("snoozed for {0:?}")]
    Snooze(std::time::Duration),
}

impl JobError {
    /// Run the job again after `delay`, its attempt not counted (see [`JobError::Snooze`]).
    pub fn snooze(delay: std::time::Duration) -> Self {
        JobError::Snooze(delay)
    }
}

/// A storage error keeps its class: permanent ones (bad input, a rule, corrupt data, a failed
/// migration) fail the job for good; transient ones and races are retried.
impl From<StoreError> for JobError {
    fn from(err: StoreError) -> Self {
        if err.is_permanent() {
            JobError::Fatal(err.to_string())
        } else {
            JobError::Retryable(err.to_string())
        }
    }
}

/// What a handler knows about the attempt it runs.
#[derive(Clone)]
pub struct JobContext {
    pub job: FetchedJob,
    pub worker: Arc<str>,
    pub store: SharedStore,
    /// Cancelled when the attempt must stop (lease lost, job cancelled, shutdown). Long
    /// handlers should check it; the runtime also drops the handler's future.
    pub cancel: CancellationToken,
    pub(crate) self_ack: SelfAck,
}

impl JobContext {
    /// Say that the handler is committing a transaction that acknowledges its own job,
    /// fenced on its lease (a workflow step does, with the step's effects): the commit now
    /// decides whether the attempt counts, so the heartbeat no longer stops it.
    pub fn mark_committing(&self) {
        self.self_ack.committing();
    }

    /// Say that that transaction committed: the runtime then writes no outcome for the
    /// attempt and forgets the job at once.
    pub fn mark_acknowledged(&self) {
        self.self_ack.acknowledged();
    }
}

/// The future a handler returns.
pub type HandlerFuture = BoxFuture<'static, Result<(), JobError>>;
type HandlerFn = Arc<dyn Fn(JobContext) -> HandlerFuture + Send + Sync>;
type ValidateFn = Arc<dyn Fn(&Value) -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
struct Entry {
    run: HandlerFn,
    validate: ValidateFn,
}

/// Handlers by job kind.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Entry>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register a handler whose payload deserialises into `T`. A payload that does not is
    /// refused at enqueue, and dead-lettered if it reaches a worker anyway.
    pub fn register<T, F, Fut>(&mut self, kind: &str, handler: F) -> &mut Self
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(T, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let run: HandlerFn = Arc::new(move |ctx: JobContext| {
            let handler = Arc::clone(&handler);
            Box::pin(async move {
                let args: T = serde_json::from_value(ctx.job.payload.clone())
                    .map_err(|e| JobError::Fatal(format!("malformed payload: {e}")))?;
                handler(args, ctx).await
            })
        });
        let validate: ValidateFn = Arc::new(|payload: &Value| {
            serde_json::from_value::<T>(payload.clone())
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        self.handlers
            .insert(kind.to_string(), Entry { run, validate });
        self
    }

    /// Is there a handler for this kind?
    pub fn contains(&self, kind: &str) -> bool {
        self.handlers.contains_key(kind)
    }

    /// Check a payload against the kind's argument type (unknown kinds pass: the catalog
    /// decides which kinds exist).
    pub fn validate(&self, kind: &str, payload: &Value) -> Result<(), String> {
        match self.handlers.get(kind) {
            Some(entry) => (entry.validate)(payload),
            None => Ok(()),
        }
    }

    /// Start the handler of a job's kind.
    pub(crate) fn start(&self, ctx: JobContext) -> Result<HandlerFuture, JobError> {
        match self.handlers.get(&ctx.job.kind) {
            Some(entry) => Ok((entry.run)(ctx)),
            None => Err(JobError::NotHere(format!(
                "no handler for job kind `{}` on this worker",
                ctx.job.kind
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::JobError;
    use crate::store::{ErrorClass, StoreError};

    /// A store error keeps its class across the store → job boundary, batched ones included:
    /// permanent fails the job for good, transient (an outage, a pool timeout) and races are
    /// retried.
    #[test]
    fn a_store_error_keeps_its_class_as_a_job_error() {
        let fatal = |e: StoreError| matches!(JobError::from(e), JobError::Fatal(_));
        let retried = |e: StoreError| matches!(JobError::from(e), JobError::Retryable(_));
        assert!(fatal(StoreError::InvalidInput("bad".into())));
        assert!(fatal(StoreError::Corrupt("x".into())));
        assert!(fatal(StoreError::Migration("x".into())));
        assert!(retried(StoreError::Database(sqlx::Error::PoolTimedOut)));
        assert!(retried(StoreError::Stale("moved on".into())));
        let batch = |class| StoreError::Batch {
            message: "m".into(),
            class,
        };
        assert!(fatal(batch(ErrorClass::Permanent)));
        assert!(retried(batch(ErrorClass::Transient)));
    }
}
