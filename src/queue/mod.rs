//! The queue runtime: how a leased job travels from the database to a handler and back.
//!
//! ```text
//!  producer ──fetch──▶ channel ──▶ apalis worker (QueueBackend) ──▶ AckLayer ──▶ Dispatcher ──▶ handler
//!     ▲                                                               │
//!     └── permits (queue concurrency) ◀── InFlight ◀──────────────────┤ outcome
//!                                            ▲                        ▼
//!                                  heartbeat (extend, abort lost)   completer ──batched──▶ store
//! ```
//! One apalis worker runs per queue. The producer, the completer and the heartbeat are
//! steward's own tasks, so fetching, acknowledging and heartbeating overlap instead of taking
//! turns in one loop.

mod ack;
mod backend;
pub mod builtin;
mod completer;
pub mod control;
mod dispatcher;
mod heartbeat;
mod inflight;
mod limits;
mod producer;
mod registry;
mod runtime;
pub mod summary;

pub use registry::{HandlerFuture, JobContext, JobError, Registry};
pub use runtime::{QueueConfig, Runtime, RuntimeConfig, RuntimeError};
