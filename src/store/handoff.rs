//! In-process hand-off: an enqueue gives a job straight to an idle producer of this process.
//!
//! A producer whose last fetch found its queue empty makes an [`Offer`] to take the next job.
//! An enqueue of one job that may start now (no unique key, no future `run_at`) into a queue
//! with an offer [claims](Offers::claim) it, inserts the job already leased to that producer's
//! worker (only if the queue is not paused: the same statement checks) and hands it over in
//! memory: no `NOTIFY`, no fetch, one round trip from the enqueue call to the handler. The row
//! is written as a fetch leaves it (running, attempt 1, leased), so from then on the job is an
//! ordinary leased job: the producer admits it through the same limits and pause gate as a
//! fetched one, heartbeats extend its lease, and if the process dies the rescuer takes it back.
//!
//! Only enqueues that commit on their own hand off: a job enqueued in a caller's transaction
//! must not start before that transaction commits, so those take the usual path (and so do
//! batches, which the fetch already takes in one round trip).

use super::{ErrorClass, JobStore, StoreError, StoreResult};
use crate::types::{Enqueued, FetchedJob, NewJob, Outcome};
use chrono::Utc;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// The enqueue side: hand `jobs` to an idle producer when [`Offers::claim`] allows, and say
/// what was enqueued; `None` when they take the usual path (no offer, or the queue is paused).
/// The insert and the hand-over run in a task of their own, so that a caller that stops
/// waiting cannot leave a job leased to a producer that never receives it.
pub(crate) async fn enqueue<S: JobStore + Clone>(
    store: &S,
    jobs: &[NewJob],
) -> StoreResult<Option<Vec<Enqueued>>> {
    let Some(claim) = store.offers().claim(jobs) else {
        return Ok(None);
    };
    let (store, job) = (store.clone(), jobs[0].clone());
    let handing = tokio::spawn(async move {
        let Some(leased) = store
            .jobs_insert_leased(&job, &claim.worker, claim.lease_for)
            .await?
        else {
            return Ok(None);
        };
        let (id, worker) = (leased.id, Arc::clone(&claim.worker));
        if let Err(job) = claim.hand(leased) {
            // The producer is gone (its runtime stopped): give the job back unstarted.
            let released = Outcome::Released {
                lease: job.lease(),
                retry_at: None,
            };
            store.jobs_apply_outcomes(&worker, &[released]).await?;
        }
        Ok(Some(vec![Enqueued { id, inserted: true }]))
    });
    handing.await.map_err(|e| {
        StoreError::batch(
            format!("the enqueue's hand-off task failed: {e}"),
            ErrorClass::Unknown,
        )
    })?
}

/// The job [`JobStore::jobs_insert_leased`] wrote as `id`, as a fetch returns it.
pub(crate) fn leased(id: i64, job: &NewJob) -> FetchedJob {
    FetchedJob {
        id,
        kind: job.kind.clone(),
        queue: job.queue.clone(),
        tenant: job.tenant.clone(),
        payload: job.payload.clone(),
        priority: job.priority,
        fair_key: 1,
        attempt: 1,
        max_attempts: job.max_attempts,
        timeout_ms: job.timeout_ms,
    }
}

/// The offers of this process's idle producers, by queue (one per store, shared by its clones).
#[derive(Clone, Default)]
pub struct Offers {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: AtomicU64,
    waiting: Mutex<HashMap<String, Vec<Waiting>>>,
}

struct Waiting {
    id: u64,
    worker: Arc<str>,
    lease_for: Duration,
    take: oneshot::Sender<FetchedJob>,
}

impl Offers {
    /// Offer to take the next job enqueued into `queue` by this process.
    pub fn offer(&self, queue: &str, worker: Arc<str>, lease_for: Duration) -> Offer {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (take, taken) = oneshot::channel();
        let waiting = Waiting {
            id,
            worker,
            lease_for,
            take,
        };
        self.with_waiting(|all| all.entry(queue.to_string()).or_default().push(waiting));
        Offer {
            id,
            queue: queue.to_string(),
            offers: self.clone(),
            taken: Some(taken),
        }
    }

    /// The offer that will take `job`, if it may be handed off: one job, startable now, into a
    /// queue with an idle producer. The newest offer is taken (its producer is the likeliest
    /// to have free slots still).
    pub fn claim(&self, jobs: &[NewJob]) -> Option<Claim> {
        let [job] = jobs else { return None };
        if job.unique_key.is_some() || job.run_at.is_some_and(|at| at > Utc::now()) {
            return None;
        }
        self.with_waiting(|all| {
            let waiting = all.get_mut(&job.queue)?;
            while let Some(offer) = waiting.pop() {
                if !offer.take.is_closed() {
                    return Some(Claim {
                        worker: offer.worker,
                        lease_for: offer.lease_for,
                        take: offer.take,
                    });
                }
            }
            None
        })
    }

    fn with_waiting<T>(&self, f: impl FnOnce(&mut HashMap<String, Vec<Waiting>>) -> T) -> T {
        // A panic while holding this lock cannot leave the map half-changed: use it as it is.
        let mut all = match self.inner.waiting.lock() {
            Ok(all) => all,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut all)
    }

    /// Remove an offer not claimed yet; false once an enqueue claimed it.
    fn withdraw(&self, queue: &str, id: u64) -> bool {
        self.with_waiting(|all| {
            let Some(waiting) = all.get_mut(queue) else {
                return false;
            };
            let before = waiting.len();
            waiting.retain(|offer| offer.id != id);
            let removed = waiting.len() < before;
            if waiting.is_empty() {
                all.remove(queue);
            }
            removed
        })
    }
}

/// A claimed offer: the worker the job is leased to, and the way to hand it over. Dropped
/// without handing, its producer fetches as usual.
pub struct Claim {
    pub worker: Arc<str>,
    pub lease_for: Duration,
    take: oneshot::Sender<FetchedJob>,
}

impl Claim {
    /// Give the leased job to the producer; the job comes back if the producer is gone.
    pub fn hand(self, job: FetchedJob) -> Result<(), Box<FetchedJob>> {
        self.take.send(job).map_err(Box::new)
    }
}

/// An idle producer's offer to take the next job of its queue.
pub struct Offer {
    id: u64,
    queue: String,
    offers: Offers,
    taken: Option<oneshot::Receiver<FetchedJob>>,
}

impl Offer {
    /// Wait until an enqueue claims this offer: its job, or `None` if the enqueue could not
    /// insert it (the queue was paused, the database failed), in which case the job, if any,
    /// was enqueued the usual way. Cancel-safe: call it again after a `select!` dropped it.
    pub async fn taken(&mut self) -> Option<FetchedJob> {
        let taken = self.taken.as_mut()?;
        let job = taken.await.ok();
        self.taken = None;
        job
    }

    /// Stop offering. An enqueue that claimed the offer already is inserting its job, leased
    /// to this producer: wait for it, and take it.
    pub async fn withdraw(mut self) -> Option<FetchedJob> {
        if self.offers.withdraw(&self.queue, self.id) {
            return None;
        }
        self.taken().await
    }
}

impl Drop for Offer {
    fn drop(&mut self) {
        self.offers.withdraw(&self.queue, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(queue: &str) -> NewJob {
        NewJob {
            kind: "noop".into(),
            queue: queue.into(),
            tenant: String::new(),
            payload: json!({}),
            priority: 0,
            max_attempts: 3,
            timeout_ms: 1000,
            unique_key: None,
            run_at: None,
        }
    }

    #[tokio::test]
    async fn only_one_startable_job_into_a_queue_with_an_offer_claims_it() {
        let offers = Offers::default();
        assert!(offers.claim(&[job("q")]).is_none(), "no offer yet");
        let offer = offers.offer("q", "w".into(), Duration::from_secs(30));
        assert!(offers.claim(&[job("other")]).is_none());
        assert!(offers.claim(&[job("q"), job("q")]).is_none(), "a batch");
        let keyed = NewJob {
            unique_key: Some("k".into()),
            ..job("q")
        };
        assert!(offers.claim(&[keyed]).is_none(), "a unique key");
        let later = NewJob {
            run_at: Some(Utc::now() + chrono::Duration::seconds(60)),
            ..job("q")
        };
        assert!(offers.claim(&[later]).is_none(), "a future run_at");
        let claim = offers.claim(&[job("q")]).expect("claimed");
        assert_eq!(&*claim.worker, "w");
        assert!(
            offers.claim(&[job("q")]).is_none(),
            "an offer is claimed once"
        );
        drop(claim);
        assert!(
            offer.withdraw().await.is_none(),
            "a dropped claim hands nothing"
        );
    }

    #[tokio::test]
    async fn a_withdrawn_offer_is_not_claimed_and_a_claimed_one_is_waited_for() {
        let offers = Offers::default();
        let offer = offers.offer("q", "w".into(), Duration::from_secs(30));
        assert!(offer.withdraw().await.is_none());
        assert!(offers.claim(&[job("q")]).is_none(), "withdrawn");
        drop(offers.offer("q", "w".into(), Duration::from_secs(30)));
        assert!(offers.claim(&[job("q")]).is_none(), "dropped");

        let offer = offers.offer("q", "w".into(), Duration::from_secs(30));
        let claim = offers.claim(&[job("q")]).expect("claimed");
        let handed = tokio::spawn(async move {
            tokio::task::yield_now().await;
            claim.hand(FetchedJob {
                id: 7,
                kind: "noop".into(),
                queue: "q".into(),
                tenant: String::new(),
                payload: json!({}),
                priority: 0,
                fair_key: 1,
                attempt: 1,
                max_attempts: 3,
                timeout_ms: 1000,
            })
        });
        let job = offer.withdraw().await.expect("the claimed job is taken");
        assert_eq!(job.id, 7);
        assert!(handed.await.unwrap().is_ok());
    }
}
