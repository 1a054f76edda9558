//! Coalescing of many small storage calls into batches: the requests made while earlier batches
//! are being written form the next batch. The engine reads runs and records completions of
//! steps that wrote nothing to the database this way, so that a busy worker pays one round
//! trip and one commit per batch, not per step.

use crate::store::{ErrorClass, StoreError, StoreResult};
use futures::future::BoxFuture;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

type Waiter<O> = oneshot::Sender<StoreResult<O>>;
type BatchFn<I, O> = Arc<dyn Fn(Vec<I>) -> BoxFuture<'static, StoreResult<Vec<O>>> + Send + Sync>;

/// Sends single requests to a task that runs them in batches through one function.
pub(crate) struct Coalescer<I, O> {
    requests: mpsc::UnboundedSender<(I, Waiter<O>)>,
}

impl<I: Send + 'static, O: Send + 'static> Coalescer<I, O> {
    /// Start the batching task (on the current tokio runtime). `run` gets up to `max` requests
    /// and must answer them in order; up to `in_flight` batches run at once (each on its own
    /// connection), so that the database works on one batch while the worker prepares or
    /// answers another. `run` must therefore be safe to call concurrently with itself. The
    /// task ends when the coalescer is dropped.
    pub fn spawn(max: usize, in_flight: usize, run: BatchFn<I, O>) -> Self {
        let (requests, mut incoming) = mpsc::unbounded_channel::<(I, Waiter<O>)>();
        let slots = Arc::new(Semaphore::new(in_flight.max(1)));
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max);
            while incoming.recv_many(&mut batch, max.max(1)).await > 0 {
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    break;
                };
                // Requests that came while every slot was busy join this batch.
                while batch.len() < max {
                    match incoming.try_recv() {
                        Ok(request) => batch.push(request),
                        Err(_) => break,
                    }
                }
                let (items, waiters): (Vec<I>, Vec<Waiter<O>>) = batch.drain(..).unzip();
                let run = Arc::clone(&run);
                tokio::spawn(async move {
                    let answers = run(items).await;
                    drop(slot);
                    answer(answers, waiters);
                });
            }
        });
        Coalescer { requests }
    }

    /// Queue one request and wait for its answer.
    pub async fn call(&self, item: I) -> StoreResult<O> {
        let (waiter, answer) = oneshot::channel();
        self.requests.send((item, waiter)).map_err(|_| {
            StoreError::batch("the batching task has stopped", ErrorClass::Transient)
        })?;
        answer.await.map_err(|_| {
            StoreError::batch("the batching task has stopped", ErrorClass::Transient)
        })?
    }
}

/// Hand each waiter its answer, or every waiter the batch's error.
fn answer<O>(result: StoreResult<Vec<O>>, waiters: Vec<Waiter<O>>) {
    let count = waiters.len();
    match result {
        Ok(answers) if answers.len() == count => {
            for (waiter, answer) in waiters.into_iter().zip(answers) {
                let _ = waiter.send(Ok(answer));
            }
        }
        Ok(answers) => {
            let why = format!("{} answers to {count} requests", answers.len());
            for waiter in waiters {
                let _ = waiter.send(Err(StoreError::batch(why.clone(), ErrorClass::Unknown)));
            }
        }
        Err(err) => {
            let (why, class) = (err.to_string(), err.class());
            for waiter in waiters {
                let _ = waiter.send(Err(StoreError::batch(why.clone(), class)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::Barrier;

    #[tokio::test]
    async fn batches_run_side_by_side_and_each_request_gets_its_own_answer() {
        // Batches of one request, two in flight: each batch waits at a barrier of two, which
        // only opens if both batches are running at once.
        let barrier = Arc::new(Barrier::new(2));
        let coalescer: Coalescer<u32, u32> = Coalescer::spawn(
            1,
            2,
            Arc::new(move |items: Vec<u32>| {
                let barrier = Arc::clone(&barrier);
                Box::pin(async move {
                    barrier.wait().await;
                    Ok(items.iter().map(|i| i * 10).collect())
                })
            }),
        );
        let both = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(coalescer.call(1), coalescer.call(2))
        })
        .await
        .expect("the two batches did not run at once");
        assert_eq!(both.0.unwrap(), 10);
        assert_eq!(both.1.unwrap(), 20);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_requests_with_its_class() {
        let failing = |err: fn() -> StoreError| -> Coalescer<u32, u32> {
            Coalescer::spawn(
                10,
                1,
                Arc::new(move |_items: Vec<u32>| Box::pin(async move { Err(err()) })),
            )
        };
        // A pool that timed out goes away by itself: each request may be retried.
        let err = failing(|| StoreError::Database(sqlx::Error::PoolTimedOut))
            .call(1)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("pool timed out"), "{err}");
        assert!(err.is_transient() && !err.is_permanent(), "{err:?}");
        // Bad input stays bad: no request is retried.
        let err = failing(|| StoreError::InvalidInput("no such step".into()))
            .call(1)
            .await
            .unwrap_err();
        assert!(err.is_permanent() && !err.is_transient(), "{err:?}");
    }
}
