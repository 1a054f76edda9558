//! Coalescing of many small storage calls into batches: the requests made while one batch is
//! being written form the next batch. The engine reads runs and records completions of
//! steps that wrote nothing to the database this way, so that a busy worker pays one round
//! trip and one commit per batch, not per step.

use crate::store::{StoreError, StoreResult};
use futures::future::BoxFuture;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

type Waiter<O> = oneshot::Sender<StoreResult<O>>;
type BatchFn<I, O> = Arc<dyn Fn(Vec<I>) -> BoxFuture<'static, StoreResult<Vec<O>>> + Send + Sync>;

/// Sends single requests to a task that runs them in batches through one function.
pub(crate) struct Coalescer<I, O> {
    requests: mpsc::UnboundedSender<(I, Waiter<O>)>,
}

impl<I: Send + 'static, O: Send + 'static> Coalescer<I, O> {
    /// Start the batching task (on the current tokio runtime). `run` gets up to `max` requests
    /// and must answer them in order. The task ends when the coalescer is dropped.
    pub fn spawn(max: usize, run: BatchFn<I, O>) -> Self {
        let (requests, mut incoming) = mpsc::unbounded_channel::<(I, Waiter<O>)>();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max);
            while incoming.recv_many(&mut batch, max.max(1)).await > 0 {
                let (items, waiters): (Vec<I>, Vec<Waiter<O>>) = batch.drain(..).unzip();
                let count = items.len();
                match run(items).await {
                    Ok(answers) if answers.len() == count => {
                        for (waiter, answer) in waiters.into_iter().zip(answers) {
                            let _ = waiter.send(Ok(answer));
                        }
                    }
                    Ok(answers) => {
                        let why = format!("{} answers to {count} requests", answers.len());
                        for waiter in waiters {
                            let _ = waiter.send(Err(StoreError::Batch(why.clone())));
                        }
                    }
                    Err(err) => {
                        let why = err.to_string();
                        for waiter in waiters {
                            let _ = waiter.send(Err(StoreError::Batch(why.clone())));
                        }
                    }
                }
            }
        });
        Coalescer { requests }
    }

    /// Queue one request and wait for its answer.
    pub async fn call(&self, item: I) -> StoreResult<O> {
        let (waiter, answer) = oneshot::channel();
        self.requests
            .send((item, waiter))
            .map_err(|_| StoreError::Batch("the batching task has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Batch("the batching task has stopped".into()))?
    }
}
