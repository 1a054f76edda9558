//! The producer: leases jobs of one queue as fast as the queue's concurrency allows and
//! hands them to the queue's apalis worker.
//!
//! It fetches as many jobs as there are free slots (up to a batch), so a fetch of the next
//! batch overlaps with the handlers and the completer of the previous one. Only after a fetch
//! found nothing does it sleep, until an enqueue signal for its queue or the poll interval.
//!
//! Why that rule keeps pickup prompt although PostgreSQL enqueues signal only into an empty
//! queue: a producer sleeps only after seeing the queue empty; a job committed after that
//! almost always found the queue empty (and signalled) or found an earlier such job, whose
//! signal wakes the producer, which then fetches until it sees the queue empty again. The one
//! gap: an enqueue that ran while a fetch had claimed the last jobs but not yet committed sees
//! them as still available and does not signal; the poll interval bounds that wait.
//!
//! A producer fetches from where its previous full fetch stopped (a [`FetchCursor`]), so that
//! PostgreSQL does not walk the index entries of the jobs already taken from the head of a
//! large backlog. It goes back to the head after a fetch that found fewer jobs than it asked
//! for, and at least every [`BACK_TO_HEAD`], so that a job made available behind the cursor
//! (retried, staged, rescued, of a higher priority) waits no longer than that.

use super::completer::OutcomeSender;
use super::control;
use super::inflight::InFlight;
use super::limits::{self, Verdict};
use crate::kinds::KindCatalog;
use crate::store::{FetchCursor, FetchParams, SharedStore};
use crate::types::{FetchedJob, Outcome};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a producer may fetch from its cursor before it looks at the head again.
pub(crate) const BACK_TO_HEAD: Duration = Duration::from_millis(250);
use tokio::sync::{Semaphore, broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

pub(crate) struct Producer {
    pub store: SharedStore,
    /// The queue's concurrency limit in this process (the permits' total).
    pub concurrency: usize,
    pub outcomes: OutcomeSender,
    pub queue: String,
    pub worker: Arc<str>,
    pub batch: usize,
    pub lease_for: Duration,
    pub poll_interval: Duration,
    pub permits: Arc<Semaphore>,
    /// Jobs held (running or waiting for the completer); see [`super::inflight`].
    pub unwritten: Arc<Semaphore>,
    pub inflight: InFlight,
    pub jobs: mpsc::Sender<FetchedJob>,
    /// Closed while the queue is paused (see [`super::control`]).
    pub gate: watch::Receiver<bool>,
    pub shutdown: CancellationToken,
    /// The kinds, for their flow-control limits (see [`super::limits`]).
    pub kinds: Arc<KindCatalog>,
}

impl Producer {
    pub async fn run(mut self) {
        let mut signals = self.store.subscribe();
        let mut failures: u32 = 0;
        let mut busy = false;
        let mut cursor: Option<FetchCursor> = None;
        let mut head_at = Instant::now();
        // A job an enqueue of this process handed over while this producer was idle (see
        // `store::handoff`): leased to this worker already, it takes the place of a fetch.
        let mut handed: Option<FetchedJob> = None;
        loop {
            // A handed job goes on to the pause check below, which gives it back if paused.
            if handed.is_none() && !control::wait_open(&mut self.gate, &self.shutdown).await {
                return;
            }
            // Wait for one free slot (and room among the held jobs), then take as many as
            // are free.
            let first_held = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return self.release(handed),
                slot = Arc::clone(&self.unwritten).acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => return self.release(handed),
                },
            };
            let first = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return self.release(handed),
                permit = Arc::clone(&self.permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return self.release(handed),
                },
            };
            // Under load, slots free up one at a time; a fetch per slot would make the fetch
            // the bottleneck. When only a few slots are free and the last fetch found work,
            // wait a moment for more to free up, so each fetch takes a useful batch. An idle
            // queue (all slots free) fetches at once, so pickup latency is not affected.
            let small =
                (self.permits.available_permits() + 1) * 4 < self.batch.min(self.concurrency);
            if small && busy {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let want = (self.permits.available_permits() + 1)
                .min(self.unwritten.available_permits() + 1)
                .min(self.batch);
            drain(&mut signals);
            if head_at.elapsed() >= BACK_TO_HEAD {
                cursor = None;
            }
            if cursor.is_none() {
                head_at = Instant::now();
            }
            let was_handed = handed.is_some();
            let fetched = match handed.take() {
                Some(job) => Ok(vec![job]),
                None => {
                    self.store
                        .jobs_fetch_available(FetchParams {
                            queue: &self.queue,
                            limit: want,
                            worker: &self.worker,
                            lease_for: self.lease_for,
                            after: cursor,
                        })
                        .await
                }
            };
            let jobs = match fetched {
                Ok(jobs) => {
                    failures = 0;
                    // Jobs come sorted in fetch order; a short fetch sends the next to the head.
                    // A handed job was not fetched: the cursor stays where it was.
                    if !was_handed {
                        cursor = match jobs.last() {
                            Some(last) if jobs.len() >= want => Some(FetchCursor::of(last)),
                            _ => None,
                        };
                    }
                    jobs
                }
                Err(err) => {
                    cursor = None;
                    drop(first);
                    drop(first_held);
                    failures = failures.saturating_add(1);
                    let wait = Duration::from_millis(50u64 << failures.min(6));
                    tracing::warn!(queue = %self.queue, error = %err, ?wait, "fetch failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue,
                        _ = self.shutdown.cancelled() => return,
                    }
                }
            };
            // Paused while this fetch was in flight: give its jobs back unstarted.
            if *self.gate.borrow() {
                for job in jobs {
                    self.outcomes.send(Outcome::Released {
                        lease: job.lease(),
                        retry_at: None,
                    });
                }
                continue;
            }
            let got = jobs.len();
            tracing::trace!(queue = %self.queue, want, got, "fetched");
            busy = got > 0;
            // Rate and concurrency limits: some jobs wait here a moment, some go back.
            let verdicts = limits::admit(&self.store, &self.kinds, &jobs).await;
            let mut first = Some(first);
            let mut first_held = Some(first_held);
            let mut jobs =
                jobs.into_iter()
                    .zip(verdicts)
                    .filter_map(|(job, verdict)| match verdict {
                        Verdict::Back(until) => {
                            self.outcomes.send(Outcome::Released {
                                lease: job.lease(),
                                retry_at: Some(until),
                            });
                            None
                        }
                        Verdict::Now => Some((job, None)),
                        Verdict::After(wait) => Some((job, Some(wait))),
                    });
            while let Some((job, wait)) = jobs.next() {
                let permit = match first.take() {
                    Some(permit) => permit,
                    // Only this producer takes permits, so the free ones counted are still free.
                    None => match Arc::clone(&self.permits).try_acquire_owned() {
                        Ok(permit) => permit,
                        Err(_) => match Arc::clone(&self.permits).acquire_owned().await {
                            Ok(permit) => permit,
                            Err(_) => return,
                        },
                    },
                };
                let held = match first_held.take() {
                    Some(slot) => slot,
                    None => match Arc::clone(&self.unwritten).acquire_owned().await {
                        Ok(slot) => slot,
                        Err(_) => return,
                    },
                };
                let lease = job.lease();
                self.inflight.insert(lease, permit, held);
                if let Some(wait) = wait {
                    self.start_after(job, wait);
                    continue;
                }
                if self.jobs.send(job).await.is_err() {
                    // The worker is gone: give back what it will never run, unstarted.
                    self.inflight.handler_done(lease);
                    self.outcomes.send(Outcome::Released {
                        lease,
                        retry_at: None,
                    });
                    for (job, _) in jobs {
                        self.outcomes.send(Outcome::Released {
                            lease: job.lease(),
                            retry_at: None,
                        });
                    }
                    return;
                }
            }
            drop(first);
            drop(first_held);
            // Sleep only after an empty fetch. After a partial one, fetch again first: an
            // enqueue that committed meanwhile may not have signalled (PostgreSQL enqueues
            // signal only into an empty queue).
            if got == 0 {
                handed = self.wait_for_work(&mut signals).await;
                if self.shutdown.is_cancelled() {
                    return self.release(handed);
                }
            }
        }
    }

    /// Hand a held job (it counts against the queue's concurrency) to the worker once its
    /// reserved start comes; at shutdown, or if the worker is gone, give it back unstarted.
    fn start_after(&self, job: FetchedJob, wait: Duration) {
        let (jobs, inflight, outcomes) = (
            self.jobs.clone(),
            self.inflight.clone(),
            self.outcomes.clone(),
        );
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let lease = job.lease();
            let started = tokio::select! {
                _ = tokio::time::sleep(wait) => jobs.send(job).await.is_ok(),
                _ = shutdown.cancelled() => false,
            };
            if !started {
                inflight.handler_done(lease);
                outcomes.send(Outcome::Released {
                    lease,
                    retry_at: None,
                });
            }
        });
    }

    /// Give back, unstarted, a handed job this producer will not run (it is stopping).
    fn release(&self, handed: Option<FetchedJob>) {
        if let Some(job) = handed {
            self.outcomes.send(Outcome::Released {
                lease: job.lease(),
                retry_at: None,
            });
        }
    }

    /// Wait, after a fetch found the queue empty, for a signal, the poll interval or a job an
    /// enqueue of this process hands over (returned). Meanwhile a free slot is certain: only
    /// this producer takes permits.
    async fn wait_for_work(&self, signals: &mut broadcast::Receiver<String>) -> Option<FetchedJob> {
        let mut offer =
            self.store
                .offers()
                .offer(&self.queue, Arc::clone(&self.worker), self.lease_for);
        let deadline = tokio::time::sleep(self.poll_interval);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                handed = offer.taken() => return handed,
                signal = signals.recv() => match signal {
                    Ok(queue) if queue == self.queue || queue.is_empty() => break,
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => {
                        tokio::select! {
                            _ = &mut deadline => break,
                            handed = offer.taken() => return handed,
                        }
                    }
                },
                _ = &mut deadline => break,
            }
        }
        // An enqueue may have claimed the offer meanwhile: its job is leased to this worker.
        offer.withdraw().await
    }
}

fn drain(signals: &mut broadcast::Receiver<String>) {
    loop {
        match signals.try_recv() {
            Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
            Err(_) => return,
        }
    }
}
