//! steward's storage behind apalis's [`Backend`] trait.
//!
//! The stock `apalis-postgres`/`apalis-sqlite` fetch, run and ack in one serialised loop and
//! fence only by worker name (see `ARCHITECTURE.md`). Here apalis drives the worker (polling,
//! concurrency of handler futures, middleware, graceful drain) while steward's producer fills
//! a channel and the [`AckLayer`] hands outcomes to the batched completer.

use super::ack::AckLayer;
use crate::types::{FetchedJob, Outcome};
use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::task::Task;
use apalis_core::worker::context::WorkerContext;
use std::convert::Infallible;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// One queue's source of leased jobs for one apalis worker.
pub(crate) struct QueueBackend {
    pub jobs: mpsc::Receiver<FetchedJob>,
    pub ack: AckLayer,
}

/// Backend errors cannot happen: storage errors are retried by the producer.
#[derive(Debug, thiserror::Error)]
#[error("unreachable")]
pub(crate) struct NoError(Infallible);

impl Backend for QueueBackend {
    type Task = Task<FetchedJob>;
    type Error = NoError;

    fn poll_ready(&mut self, _: &mut Context<'_>, _: &WorkerContext) -> Poll<Result<(), NoError>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, NoError>>> {
        self.jobs
            .poll_recv(cx)
            .map(|job| job.map(|job| Ok(Task::new(job))))
    }

    /// Shutdown: jobs fetched but never started go back to available without using an
    /// attempt. The channel is drained until the producer has dropped its end, so a fetch
    /// still in flight when shutdown began is released too, not stranded.
    fn poll_close(&mut self, cx: &mut Context<'_>, _: &WorkerContext) -> Poll<Result<(), NoError>> {
        loop {
            match self.jobs.poll_recv(cx) {
                Poll::Ready(Some(job)) => {
                    let lease = job.lease();
                    self.ack.inflight.handler_done(lease);
                    self.ack.outcomes.send(Outcome::Released {
                        lease,
                        retry_at: None,
                    });
                }
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl BackendConfig for QueueBackend {
    type Args = FetchedJob;
    type Id = ();
    type Kind = Ephemeral;
    type Config = ();
    type Layer = AckLayer;

    fn config(&self) -> &Self::Config {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        self.ack.clone()
    }
}
