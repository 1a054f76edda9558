//! The circuit breaker in front of the export storage (S3 or the local directory), for the
//! steps that write to it (`purge.export`, `archive.export`, `upgrade.backup`).
//!
//! Webhook deliveries have their breaker per host as a job kind's `[circuit_breaker]`; these
//! steps run as `workflow_step` jobs with everything else, so their breaker is kept here,
//! around the step, with the same state in the database ([`crate::store::LimitStore`], one
//! circuit per storage location, shared by every node): after [`FAILURES_TO_OPEN`] steps in a
//! row found the storage unreachable, the circuit opens and such steps wait, snoozed (no
//! attempt used, no worker held), until [`OPEN_FOR`] has passed; then one step is let through
//! as the probe, and its outcome closes the circuit or opens it again. It is visible where
//! every breaker is (`GET /api/breakers`, the metrics, the dashboard's queue page).

use crate::export::{ExportError, ExportStorage, ObjectDigest, SharedExports, Upload};
use crate::queue::JobError;
use crate::store::limits::{Admission, BreakerOutcome, LimitAsk};
use crate::workflow::{StepContext, StepFuture};
use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Steps in a row that found the storage unreachable before its circuit opens.
pub const FAILURES_TO_OPEN: u32 = 5;
/// How long an open circuit keeps steps away before a probe.
pub const OPEN_FOR: Duration = Duration::from_secs(30);

/// The circuit's key: one per storage location.
pub fn key_of(exports: &dyn ExportStorage) -> String {
    format!("storage:{}", exports.location())
}

/// A step handler that writes to the export storage.
type StorageStep = for<'a> fn(StepContext<'a>, SharedExports) -> StepFuture<'a>;

/// `step` behind the storage's circuit breaker, as a handler to register.
pub fn guarded(
    exports: SharedExports,
    step: StorageStep,
) -> impl for<'a> Fn(StepContext<'a>) -> StepFuture<'a> + Send + Sync + 'static {
    move |ctx: StepContext<'_>| -> StepFuture<'_> {
        let exports = Arc::clone(&exports);
        Box::pin(async move {
            let key = key_of(exports.as_ref());
            let (store, job) = (Arc::clone(ctx.store()), ctx.job.clone());
            // Before the step opens its transaction (SQLite has one writer).
            let ask = LimitAsk {
                lease: job.lease(),
                rate: None,
                concurrency: None,
                breaker: Some((
                    key.clone(),
                    Duration::from_millis(job.timeout_ms.max(0) as u64),
                )),
                last_attempt: job.attempt >= job.max_attempts,
            };
            let admitted = store.limits_admit(&[ask], Duration::ZERO).await?;
            if let Some(Admission::Open { until }) = admitted.each.first() {
                let wait = (*until - admitted.now).to_std().unwrap_or_default();
                return Err(JobError::snooze(wait.max(Duration::from_millis(100))));
            }
            let watch = Arc::new(Watch::default());
            let watched: SharedExports = Arc::new(Watched {
                inner: exports,
                watch: Arc::clone(&watch),
            });
            // The job's own timeout would drop the step without a word, and a storage that
            // hangs (it accepts, and never answers) would never count: the step stops a little
            // earlier, and a call still waiting for the storage then counts as unreachable.
            let limit = within_timeout(job.timeout_ms);
            let result = match tokio::time::timeout(limit, step(ctx, watched)).await {
                Ok(result) => result,
                Err(_) => {
                    if watch.waiting.load(Ordering::SeqCst) > 0 {
                        watch.unreachable.store(true, Ordering::SeqCst);
                    }
                    Err(JobError::Retryable(format!(
                        "the step did not end within {} ms",
                        limit.as_millis()
                    )))
                }
            };
            let outcome = BreakerOutcome {
                key: &key,
                job_id: job.id,
                ok: !watch.unreachable.load(Ordering::SeqCst),
                failures_to_open: FAILURES_TO_OPEN,
                open_for: OPEN_FOR,
            };
            if let Err(err) = store.breaker_record(&outcome).await {
                tracing::warn!(%key, error = %err, "could not record the storage circuit");
            }
            result
        })
    }
}

/// How long a guarded step may run: its job's timeout, less a tenth (at least a second and
/// at most a minute) to record the outcome in.
fn within_timeout(timeout_ms: i64) -> Duration {
    let timeout = Duration::from_millis(timeout_ms.max(0) as u64);
    let margin = (timeout / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    timeout
        .saturating_sub(margin)
        .max(Duration::from_millis(100))
}

/// What a step's calls to the storage met: an unreachable storage, and how many calls are
/// waiting for it now (a call dropped while it waits stays counted).
#[derive(Default)]
struct Watch {
    unreachable: AtomicBool,
    waiting: AtomicUsize,
}

impl Watch {
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, ExportError>>,
    ) -> Result<T, ExportError> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let result = call.await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        if matches!(result, Err(ExportError::Unavailable(_))) {
            self.unreachable.store(true, Ordering::SeqCst);
        }
        result
    }
}

/// The storage as one step sees it: every call passes through; an unreachable storage is
/// noted (a refused key or a mismatch is not an outage).
struct Watched {
    inner: SharedExports,
    watch: Arc<Watch>,
}

#[async_trait]
impl ExportStorage for Watched {
    async fn upload(&self, key: &str) -> Result<Box<dyn Upload>, ExportError> {
        let upload = self.watch.call(self.inner.upload(key)).await?;
        Ok(Box::new(WatchedUpload {
            inner: upload,
            watch: Arc::clone(&self.watch),
        }))
    }

    async fn digest(&self, key: &str) -> Result<ObjectDigest, ExportError> {
        self.watch.call(self.inner.digest(key)).await
    }

    async fn read(&self, key: &str) -> Result<Vec<u8>, ExportError> {
        self.watch.call(self.inner.read(key)).await
    }

    async fn check(&self) -> Result<(), ExportError> {
        self.watch.call(self.inner.check()).await
    }

    fn location(&self) -> String {
        self.inner.location()
    }
}

struct WatchedUpload {
    inner: Box<dyn Upload>,
    watch: Arc<Watch>,
}

#[async_trait]
impl Upload for WatchedUpload {
    async fn part(&mut self, bytes: Vec<u8>) -> Result<(), ExportError> {
        self.watch.call(self.inner.part(bytes)).await
    }

    async fn finish(self: Box<Self>) -> Result<(), ExportError> {
        let watch = self.watch;
        watch.call(self.inner.finish()).await
    }

    async fn abort(self: Box<Self>) {
        self.inner.abort().await
    }
}
