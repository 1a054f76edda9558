//! Workflows: named graphs of steps (by default sequences), each run as a job, declared in `workflows/*.toml`.
//!
//! - [`definition`]: parsing and validation against the job kinds and step handlers (file and
//!   line on every error), cron triggers with their next fire times ([`schedule`]);
//! - [`engine`]: persisted runs advanced step by step, atomically, with compensation and
//!   retry from the failed step;
//! - [`graph`]: which steps a step needs (`needs`), so independent steps run in parallel;
//! - [`steps`]: built-in step handlers for the demo and the tests.
//!
//! - [`scheduler`]: fires cron triggers exactly once per tick across scheduler processes;
//! - `coalesce`: batches the engine's run reads and the completions of steps that wrote
//!   nothing to the database.

mod coalesce;
pub mod definition;
pub mod engine;
pub mod graph;
pub mod schedule;
pub mod scheduler;
pub mod steps;
mod wait;

pub use definition::{
    MissedTicks, OnTimeout, ParamDef, SignalDef, StepDef, Trigger, Wait, WorkflowCatalog,
    WorkflowDef, WorkflowError,
};
pub use engine::{
    Engine, EngineError, Progress, RunSweeper, StepContext, StepFuture, StepRegistry,
    VersionInFlight,
};
