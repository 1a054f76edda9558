//! The vocabulary of queue control and the worker registry (the store's trait is
//! [`crate::store::ControlStore`]).

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;

/// A queue's pause state, as last changed by an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct QueueState {
    pub queue: String,
    pub paused: bool,
    /// Who paused or resumed it last.
    pub changed_by: String,
    pub changed_at: DateTime<Utc>,
    /// The control version of that change (see [`WorkerRecord::control_seen`]).
    pub version: i64,
}

/// What a pause or resume call changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueChange {
    /// The control version workers must have applied for the change to hold everywhere.
    pub version: i64,
    /// False when the queue already was in the state asked for (nothing changed).
    pub changed: bool,
}

/// A queue a worker process works, and its concurrency there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct WorkerQueue {
    pub name: String,
    pub concurrency: usize,
}

/// What a worker process writes about itself at every beat.
#[derive(Debug, Clone)]
pub struct WorkerBeat<'a> {
    pub id: &'a str,
    pub host: &'a str,
    pub pid: u32,
    pub queues: &'a [WorkerQueue],
    /// Jobs in its hands now (running or waiting for their outcome to be written).
    pub running: usize,
    /// The last control version it has applied.
    pub control_seen: i64,
    /// Its row counts as alive this long after the beat.
    pub ttl: Duration,
}

/// A worker process as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct WorkerRecord {
    pub id: String,
    pub host: String,
    pub pid: i64,
    pub queues: Vec<WorkerQueue>,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// Beat recently enough to count as running (by the database's clock).
    pub alive: bool,
    pub running: i64,
    /// The last queue-control version it has applied: a pause with this version or lower
    /// holds in this process.
    pub control_seen: i64,
}
