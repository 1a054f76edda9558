//! The vocabulary of workflow runs: their states, records and the requests the run store
//! takes (its trait is [`crate::store::RunStore`]).

use super::{JobId, Lease, NewJob};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use std::str::FromStr;

/// Identifier of a workflow run.
pub type RunId = i64;

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),* }
        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The name stored in the database.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }
        }
        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)*
                    other => Err(format!("unknown {} `{other}`", stringify!($name))),
                }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

string_enum!(
    /// Where a run is.
    RunState {
        Queued = "queued",
        Running = "running",
        Completed = "completed",
        Compensating = "compensating",
        Failed = "failed",
        Cancelled = "cancelled",
    }
);

string_enum!(
    /// Where a step is.
    StepState {
        Pending = "pending",
        Queued = "queued",
        Waiting = "waiting",
        Completed = "completed",
        Dead = "dead",
        Compensating = "compensating",
        Compensated = "compensated",
    }
);

/// A step as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StepRecord {
    pub idx: i32,
    pub name: String,
    pub state: StepState,
    pub output: Option<Value>,
    /// What a long step last reported (rows exported so far, tenants notified so far…).
    pub progress: Option<Value>,
    pub job_id: Option<JobId>,
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The undo of a completed step, once its compensation was queued: its own job and timing
    /// (the fields above stay those of the step's forward run).
    pub compensation: Option<StepCompensation>,
}

/// A step's compensation: the job that undid it and when it ran.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StepCompensation {
    pub job_id: JobId,
    pub started_at: Option<DateTime<Utc>>,
    /// Unset while the compensation runs. A step back at `completed` with this set: its
    /// compensation died (the run's error says so).
    pub finished_at: Option<DateTime<Utc>>,
}

/// A run with its steps.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RunRecord {
    pub id: RunId,
    pub workflow: String,
    pub params: Value,
    pub state: RunState,
    pub current_step: i32,
    pub idempotency_key: Option<String>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub steps: Vec<StepRecord>,
    /// The version of the definition the run started with (a hash of its steps, kept by
    /// [`crate::store::RunStore::workflow_version_put`]), whose steps it follows to its end; `None` for runs
    /// started before runs recorded it.
    pub version: Option<String>,
}

/// Which runs a page holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunPage {
    pub state: Option<RunState>,
    /// Only runs with a smaller id (the next, older page).
    pub before_id: Option<RunId>,
    /// Only runs with a greater id (the previous, newer page).
    pub after_id: Option<RunId>,
    /// Only runs about this tenant (their `tenant_id` parameter): a tenant admin's runs.
    pub tenant: Option<i64>,
    /// 1 to 10,000.
    pub limit: i64,
}

/// A signal sent to a run.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SignalRecord {
    pub name: String,
    pub payload: Value,
    pub sent_by: String,
    pub sent_at: DateTime<Utc>,
}

/// What starting a run needs.
#[derive(Debug, Clone)]
pub struct RunStart {
    pub workflow: String,
    pub params: Value,
    pub idempotency_key: Option<String>,
    /// At most one run per workflow and key is active; later ones wait as `queued`.
    pub concurrency_key: Option<String>,
    pub step_names: Vec<String>,
    /// The definition's version (its steps kept by [`crate::store::RunStore::workflow_version_put`]).
    pub version: String,
    /// The jobs of the steps that start with the run (their payloads name the run once it
    /// exists: see [`crate::store::RunStore::run_start`]).
    pub first_jobs: Vec<NextStep>,
}

/// A step whose job died for good, found by the run sweeper.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadStep {
    pub run_id: RunId,
    pub idx: i32,
    /// True when the dead job was a compensation.
    pub compensating: bool,
    pub error: String,
}

/// An operator's cancel of a run, as the engine decided it.
#[derive(Debug, Clone)]
pub struct RunCancel {
    pub id: RunId,
    /// Who cancelled (kept on the run: its error reads "cancelled by …").
    pub by: String,
    /// The step the run was at when the engine read it.
    pub current_step: i32,
    /// The compensations the run may start with, latest step first: the store queues the
    /// first whose step is completed (see [`Compensations`]).
    pub compensations: Compensations,
}

/// A job to queue for a run, with the step it belongs to.
#[derive(Debug, Clone)]
pub struct NextStep {
    pub idx: i32,
    pub job: NewJob,
    /// The steps that must all be completed for this one to start (for a step queued when
    /// another completes: the steps it needs, that one included). The store checks them
    /// under the run's lock, so two parallel steps completing at once start their join once.
    pub needs: Vec<i32>,
}

/// Compensation jobs a run may queue next, latest step first. The store queues the first
/// whose step is completed (decided under the run's lock, so a step completed meanwhile is
/// not skipped); none completed: nothing is left to undo.
pub type Compensations = Vec<NextStep>;

/// A step whose handler wrote nothing to the database: its completion is recorded together
/// with other such steps' in one transaction ([`crate::store::RunStore::steps_complete_many`]). Each one
/// still commits atomically with the next step's job and its own acknowledgement.
#[derive(Debug, Clone)]
pub struct StepCompletion {
    /// The step job's lease: the completion is fenced on it.
    pub lease: Lease,
    pub worker: String,
    pub run_id: RunId,
    pub idx: i32,
    pub output: Value,
    /// The steps that need this one (each queued once all it needs is completed); with
    /// none queued, the run completes once all its steps are.
    pub next: Vec<NextStep>,
    /// The run's steps are a chain (each needs the one before): at most one next step, and
    /// none means the run is over (a backend's batch may then complete the run without
    /// looking at its other steps).
    pub chain: bool,
}

/// What became of one [`StepCompletion`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletionOutcome {
    /// Recorded; the step's job is acknowledged.
    Applied,
    /// The run moved on (cancelled, failed, advanced by another delivery): nothing recorded.
    Stale,
    /// The attempt's lease was lost: nothing recorded.
    LeaseLost,
}
