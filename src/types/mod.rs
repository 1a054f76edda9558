//! The vocabulary shared by every layer: job states, the job to enqueue, the job a worker
//! holds, the outcome it reports, and the record operators read.

pub mod control;
pub mod data;
pub mod limits;
pub mod modules;
pub mod runs;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Database identifier of a job.
pub type JobId = i64;

/// Where a job is in its life. See `ARCHITECTURE.md` for the diagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its `run_at`.
    Scheduled,
    /// Ready to be fetched.
    Available,
    /// Leased by a worker.
    Running,
    /// Finished successfully (moved to the completed table).
    Completed,
    /// Failed, waiting for its backoff to pass.
    Retryable,
    /// Out of attempts or failed for good: the dead-letter queue.
    Dead,
    /// Stopped by an operator.
    Cancelled,
}

impl JobState {
    /// Every state, in life order.
    pub const ALL: [JobState; 7] = [
        JobState::Scheduled,
        JobState::Available,
        JobState::Running,
        JobState::Completed,
        JobState::Retryable,
        JobState::Dead,
        JobState::Cancelled,
    ];

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Available => "available",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Retryable => "retryable",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A state name that is not one of [`JobState::ALL`].
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown job state `{0}` (expected one of scheduled, available, running, completed, retryable, dead, cancelled)"
)]
pub struct UnknownState(pub String);

impl FromStr for JobState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

/// A job ready to be inserted; built by [`crate::Client`] from a job kind's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub kind: String,
    pub queue: String,
    /// Fairness key: jobs of one tenant never starve another tenant's. Empty for none.
    pub tenant: String,
    pub payload: Value,
    /// Lower runs first.
    pub priority: i16,
    pub max_attempts: i32,
    pub timeout_ms: i64,
    pub unique_key: Option<String>,
    /// `None` runs now.
    pub run_at: Option<DateTime<Utc>>,
}

/// What an enqueue did: a new job, or the existing job holding the same unique key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Enqueued {
    pub id: JobId,
    /// `false` when a live job with the same unique key already existed.
    pub inserted: bool,
}

/// The proof that a worker holds an attempt: attempt number plus worker id. Every write a
/// worker makes about a job is fenced on it, so a stale worker changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    pub id: JobId,
    pub attempt: i32,
}

/// A job leased to a worker by a fetch.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchedJob {
    pub id: JobId,
    pub kind: String,
    pub queue: String,
    pub tenant: String,
    pub payload: Value,
    pub priority: i16,
    pub fair_key: i64,
    pub attempt: i32,
    pub max_attempts: i32,
    pub timeout_ms: i64,
}

impl FetchedJob {
    /// The trace id of a job's log lines: the one its payload carries (`trace_id`, 32 hex
    /// digits), else one per workflow run (every step of a run shares it), else one per job
    /// (every attempt shares it), so that `grep trace_id` finds the whole story.
    pub fn trace_id(&self) -> String {
        let given = self
            .payload
            .get("trace_id")
            .and_then(serde_json::Value::as_str)
            .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()));
        if let Some(id) = given {
            return id.to_ascii_lowercase();
        }
        match self
            .payload
            .get("run_id")
            .and_then(serde_json::Value::as_i64)
        {
            Some(run) => format!("{:016x}{run:016x}", u64::from_be_bytes(*b"steward\x01")),
            None => format!(
                "{:016x}{:016x}",
                u64::from_be_bytes(*b"steward\x02"),
                self.id
            ),
        }
    }

    /// The lease this fetch granted.
    pub fn lease(&self) -> Lease {
        Lease {
            id: self.id,
            attempt: self.attempt,
        }
    }
}

/// The end of one attempt, reported by a worker and applied in batches.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The handler succeeded.
    Completed {
        lease: Lease,
        finished_at: DateTime<Utc>,
    },
    /// The handler failed; `retry_at: None` sends the job to the dead-letter queue.
    Failed {
        lease: Lease,
        error: String,
        started_at: DateTime<Utc>,
        finished_at: DateTime<Utc>,
        retry_at: Option<DateTime<Utc>>,
    },
    /// The job was not run here (fetched but not started before shutdown, or a kind this
    /// worker has no handler for): back to the queue, its attempt not counted; available at
    /// once, or `scheduled` until `retry_at` (so another deployment, one with the handler,
    /// takes it meanwhile).
    Released {
        lease: Lease,
        retry_at: Option<DateTime<Utc>>,
    },
}

impl Outcome {
    /// The lease the outcome is fenced on.
    pub fn lease(&self) -> Lease {
        match self {
            Outcome::Completed { lease, .. }
            | Outcome::Failed { lease, .. }
            | Outcome::Released { lease, .. } => *lease,
        }
    }
}

/// One attempt as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptRecord {
    pub attempt: i32,
    pub worker: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `None` for the successful attempt.
    pub error: Option<String>,
}

/// A job as operators see it, in whichever table it lives.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct JobRecord {
    pub id: JobId,
    pub kind: String,
    pub queue: String,
    pub tenant: String,
    pub payload: Value,
    pub state: JobState,
    pub priority: i16,
    pub attempt: i32,
    pub max_attempts: i32,
    pub timeout_ms: i64,
    pub unique_key: Option<String>,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub attempted_at: Option<DateTime<Utc>>,
    pub leased_by: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Every finished attempt, oldest first (the running one is not listed).
    pub attempts: Vec<AttemptRecord>,
}

/// Which jobs a listing or a bulk operation applies to. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFilter {
    pub ids: Vec<JobId>,
    pub state: Option<JobState>,
    pub queue: Option<String>,
    pub kind: Option<String>,
    pub tenant: Option<String>,
    /// Only ids greater than this (keyset paging towards newer jobs).
    pub after_id: Option<JobId>,
    /// Only ids smaller than this (keyset paging towards older jobs).
    pub before_id: Option<JobId>,
    /// Only jobs created at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only jobs created before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only jobs whose payload or errors contain this text (case-insensitive). It reads every
    /// job of the other conditions: bound it with `since` (see BENCHMARKS.md for its cost).
    pub text: Option<String>,
    /// List the newest first (a page is still the `limit` jobs nearest the cursor).
    pub newest_first: bool,
    pub limit: Option<i64>,
}

/// What `/metrics` shows of the runtime besides counts (see
/// [`crate::store::JobAdmin::runtime_gauges`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RuntimeGauges {
    /// Per queue with available jobs: how long, in milliseconds, the oldest has been due.
    pub oldest_available_ms: Vec<(String, i64)>,
    /// Per worker holding running jobs: how many.
    pub running_by_worker: Vec<(String, i64)>,
    /// The leaderships held now: (name, holder).
    pub leaders: Vec<(String, String)>,
}

/// Jobs that ended in one minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct MinuteCount {
    /// The minute's start.
    pub minute: DateTime<Utc>,
    pub completed: i64,
    /// Jobs that failed (retryable or dead) whose last attempt ended in this minute.
    pub failed: i64,
}

/// How many jobs are in a state, per queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateCount {
    pub queue: String,
    pub state: JobState,
    pub count: i64,
}

/// What a rescue round did (see [`crate::store::JobStore::jobs_rescue_expired`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rescue {
    /// The expired leases were rescued: the queues that got jobs back, one entry per job.
    Rescued(Vec<String>),
    /// Nothing was rescued: getting the writer took `waited`, so heartbeats may not have
    /// been written meanwhile.
    WriterStalled { waited: Duration },
}

/// Parameters of one fetch.
#[derive(Debug, Clone)]
pub struct FetchParams<'a> {
    pub queue: &'a str,
    pub limit: usize,
    pub worker: &'a str,
    pub lease_for: Duration,
    /// Fetch only jobs after this position (where the producer's previous fetch stopped), or
    /// from the head of the queue with `None`. PostgreSQL's fetch index keeps the entries of
    /// jobs already taken until vacuum removes them: starting after the cursor skips them (at
    /// 900,000 jobs taken, a fetch from the head walked 5,400 index pages of them, 14 ms).
    pub after: Option<FetchCursor>,
}

/// A position in a queue's fetch order: `(priority, fair_key, id)` of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchCursor {
    pub priority: i16,
    pub fair_key: i64,
    pub id: i64,
}

impl FetchCursor {
    /// The position of `job`.
    pub fn of(job: &FetchedJob) -> Self {
        Self {
            priority: job.priority,
            fair_key: job.fair_key,
            id: job.id,
        }
    }

    /// Before every job: the head of the queue.
    pub const HEAD: Self = Self {
        priority: i16::MIN,
        fair_key: i64::MIN,
        id: i64::MIN,
    };
}

/// What a bulk operator action applied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, utoipa::ToSchema)]
pub struct Affected {
    pub count: u64,
}

/// A job kind's defaults, as published for enqueues from SQL ([`crate::store::JobAdmin::kinds_publish`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindDefaults {
    pub kind: String,
    pub queue: String,
    pub priority: i16,
    pub max_attempts: i32,
    pub timeout_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetched(id: JobId, payload: Value) -> FetchedJob {
        FetchedJob {
            id,
            kind: "noop".into(),
            queue: "default".into(),
            tenant: String::new(),
            payload,
            priority: 0,
            fair_key: 0,
            attempt: 1,
            max_attempts: 3,
            timeout_ms: 1000,
        }
    }

    #[test]
    fn trace_ids_follow_the_payload_then_the_run_then_the_job() {
        let given = "0123456789ABCDEF0123456789abcdef";
        assert_eq!(
            fetched(1, serde_json::json!({"trace_id": given})).trace_id(),
            given.to_ascii_lowercase()
        );
        let step_a = fetched(1, serde_json::json!({"run_id": 7})).trace_id();
        let step_b = fetched(2, serde_json::json!({"run_id": 7})).trace_id();
        assert_eq!(step_a, step_b, "every step of a run shares its trace");
        let job = fetched(1, serde_json::json!({"trace_id": "short"})).trace_id();
        assert_ne!(job, step_a);
        for id in [step_a, job] {
            assert_eq!(id.len(), 32);
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }
}
