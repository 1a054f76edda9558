//! Workflows: named sequences of steps, each run as a job, declared in `workflows/*.toml`.
//!
//! This module so far holds the definitions ([`definition`]): parsing, validation against the
//! job kinds and step handlers (file and line on every error), and cron triggers with their
//! next fire times ([`schedule`]). The engine that persists runs and advances them step by
//! step is the next piece of work (issue #3).

pub mod definition;
pub mod schedule;

pub use definition::{
    MissedTicks, ParamDef, StepDef, Trigger, WorkflowCatalog, WorkflowDef, WorkflowError,
};
