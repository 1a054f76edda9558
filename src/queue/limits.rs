//! Flow control before a job starts: the rate and concurrency limits its kind declares
//! (`[rate_limit]`, `[concurrency_limit]` in `jobs/*.toml`, see [`crate::limits`]), enforced
//! across every node through the database ([`crate::store::LimitStore`]).
//!
//! After each fetch the producer asks once about the fetched jobs whose kind has a limit. A
//! job starts now, or at a start reserved for it within [`HORIZON`] (the producer holds it
//! until then); a job whose reserved start is further away, or whose concurrency limit is
//! full, goes back to its queue `scheduled` (released: its attempt is not counted), so it
//! holds no worker while it waits and jobs of other keys pass it. A job whose circuit is open
//! goes back until a probe may pass; the end of every attempt under a circuit breaker is
//! recorded ([`record_breaker`]). Jobs of kinds without limits never reach the database
//! here: a limit costs nothing where none is declared.

use crate::kinds::KindCatalog;
use crate::store::SharedStore;
use crate::store::limits::{Admission, LimitAsk};
use crate::types::FetchedJob;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::time::Duration;

/// How far ahead a reserved start is waited for in the process (rather than in the queue).
/// Longer than the stager's period, so a job sent back comes back before its start.
pub(crate) const HORIZON: Duration = Duration::from_millis(500);

/// When a fetched job may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Now,
    /// Held here this long, then started.
    After(Duration),
    /// Released to its queue until then, its attempt not counted.
    Back(DateTime<Utc>),
}

/// How long a job whose concurrency limit is full stays away: longer the more of its key's
/// jobs are already waiting in this batch, with jitter so that they do not return together.
fn full_wait(waiting_before: usize) -> chrono::Duration {
    let ms = (100 * (1 + waiting_before as u64)).min(5_000);
    let jitter = fastrand::u64(0..=ms / 4);
    chrono::Duration::milliseconds((ms + jitter) as i64)
}

/// Decide, for each fetched job in order, when it starts.
pub(crate) async fn admit(
    store: &SharedStore,
    kinds: &KindCatalog,
    jobs: &[FetchedJob],
) -> Vec<Verdict> {
    let mut verdicts = vec![Verdict::Now; jobs.len()];
    let mut asks = Vec::new();
    let mut asked = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let Some(kind) = kinds.get(&job.kind) else {
            continue;
        };
        let limits = &kind.limits;
        if limits.is_empty() {
            continue;
        }
        asks.push(LimitAsk {
            lease: job.lease(),
            rate: limits
                .rate
                .as_ref()
                .map(|r| (r.key_of(&job.payload, &job.tenant), r.every())),
            concurrency: limits
                .concurrency
                .as_ref()
                .map(|c| (c.key_of(&job.payload, &job.tenant), i64::from(c.limit))),
            // A probe may take as long as the job's timeout before another is let through.
            breaker: limits
                .breaker
                .as_ref()
                .map(|b| (b.key_of(&job.payload, &job.tenant), kind.timeout)),
            last_attempt: job.attempt >= job.max_attempts,
        });
        asked.push(i);
    }
    if asks.is_empty() {
        return verdicts;
    }
    let admitted = match store.limits_admit(&asks, HORIZON).await {
        Ok(admitted) => admitted,
        Err(err) => {
            // Nothing was decided: the limited jobs go back for a moment.
            tracing::warn!(error = %err, jobs = asks.len(), "flow-control check failed; jobs go back");
            let back = Utc::now() + chrono::Duration::seconds(1);
            for i in asked {
                verdicts[i] = Verdict::Back(back);
            }
            return verdicts;
        }
    };
    let mut full_per_key: HashMap<&str, usize> = HashMap::new();
    for ((i, ask), admission) in asked.into_iter().zip(&asks).zip(admitted.each) {
        verdicts[i] = match admission {
            Admission::Start { at } if at <= admitted.now => Verdict::Now,
            Admission::Start { at } => {
                Verdict::After((at - admitted.now).to_std().unwrap_or_default())
            }
            Admission::Later { slot } => {
                Verdict::Back(slot - chrono::Duration::from_std(HORIZON).unwrap_or_default())
            }
            Admission::Open { until } => Verdict::Back(until),
            Admission::Full { .. } => {
                let key = ask
                    .concurrency
                    .as_ref()
                    .map(|c| c.0.as_str())
                    .unwrap_or_default();
                let waiting = full_per_key.entry(key).or_insert(0);
                *waiting += 1;
                Verdict::Back(admitted.now + full_wait(*waiting - 1))
            }
        };
    }
    verdicts
}

/// After an attempt of a kind with a circuit breaker: record whether its dependency answered
/// (a success closes the circuit; a failure counts towards opening it, and a failed probe
/// opens it again).
pub(crate) async fn record_breaker(
    store: &SharedStore,
    kinds: &KindCatalog,
    job: &FetchedJob,
    ok: bool,
) {
    let Some(breaker) = kinds.get(&job.kind).and_then(|k| k.limits.breaker.as_ref()) else {
        return;
    };
    let key = breaker.key_of(&job.payload, &job.tenant);
    let outcome = crate::store::limits::BreakerOutcome {
        key: &key,
        job_id: job.id,
        ok,
        failures_to_open: breaker.failures,
        open_for: breaker.open_for,
    };
    if let Err(err) = store.breaker_record(&outcome).await {
        tracing::warn!(%key, error = %err, "could not record a circuit breaker outcome");
    }
}
