//! The vocabulary of flow control: what a fetched job asks of its limits, what they answer,
//! and circuit breakers (the store's trait is [`crate::store::LimitStore`]).

use super::Lease;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// The limits one just-fetched job must pass before it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitAsk {
    pub lease: Lease,
    /// A rate limit: the key's starts are spaced `every` apart (N per period is one every
    /// period / N).
    pub rate: Option<(String, Duration)>,
    /// A concurrency limit: at most this many of the key's jobs running at once, anywhere.
    pub concurrency: Option<(String, i64)>,
    /// A circuit breaker: its key, and how long a probe may take before another is let through.
    pub breaker: Option<(String, Duration)>,
    /// This attempt is the job's last: it is never a circuit's probe (a failed probe must not
    /// send a job to the dead-letter queue), so another job probes.
    pub last_attempt: bool,
}

/// When one job may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// At `at` (by the database's clock: now, or a reserved start within the horizon).
    Start { at: DateTime<Utc> },
    /// Its rate limit's next start for it is `slot`, beyond the horizon: reserved for it,
    /// to be taken when it comes back.
    Later { slot: DateTime<Utc> },
    /// Its concurrency limit is full (`running` jobs hold it).
    Full { running: i64 },
    /// Its circuit is open (or another job is probing it) until `until`.
    Open { until: DateTime<Utc> },
}

/// A circuit breaker as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct BreakerRecord {
    pub key: String,
    /// `closed`, `open`, or `half_open` (a probe may pass, or one is under way).
    pub state: String,
    /// Failed attempts in a row.
    pub failures: i64,
    pub opened_at: Option<DateTime<Utc>>,
    /// When a probe may pass, while open.
    pub probe_at: Option<DateTime<Utc>>,
    pub changed_at: DateTime<Utc>,
}

/// The end of an attempt under a circuit breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerOutcome<'a> {
    pub key: &'a str,
    pub job_id: i64,
    /// The dependency answered (the attempt succeeded).
    pub ok: bool,
    /// Failures in a row that open the circuit.
    pub failures_to_open: u32,
    pub open_for: Duration,
}

/// What one admission decided, with the database's clock when it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub now: DateTime<Utc>,
    /// One per ask, in order.
    pub each: Vec<Admission>,
}
