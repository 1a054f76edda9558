//! # steward
//!
//! A durable job queue and workflow orchestrator for the module lifecycle of a multi-tenant
//! SaaS platform, on PostgreSQL (many nodes) or SQLite (embedded).
//!
//! ## Concepts
//! - **Job kinds** are declared in `jobs/*.toml` ([`kinds`]): queue, priority, attempts,
//!   backoff, timeout, unique-key template.
//! - **Handlers** are registered in a [`queue::Registry`] under a kind's name.
//! - The **[`Client`]** enqueues, on its own or inside the caller's sqlx transaction.
//! - The **runtime** ([`queue::Runtime`]) runs one apalis worker per queue over steward's own
//!   storage ([`store`]), plus the maintenance services ([`maintenance`]).
//! - **Workflows** ([`workflow`]) are persisted runs of steps, each step a job.
//! - The **module lifecycle** rules ([`domain`]): catalog maturity, tenant module status,
//!   availability, identifiers.
//!
//! ## Quick start
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use steward::{Client, kinds::KindCatalog, store};
//! let store = store::connect("sqlite://data/steward.db").await?;
//! store.migrate().await?;
//! let kinds = KindCatalog::load_dir("jobs".as_ref())?;
//! let client = Client::new(store, kinds);
//! let job = client.enqueue("noop", serde_json::json!({}), Default::default()).await?;
//! println!("enqueued job {}", job.id);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod dashboard;
mod definitions;
pub mod domain;
pub mod export;
pub mod fields;
pub mod http;
pub mod kinds;
pub mod lifecycle;
pub mod limits;
pub mod maintenance;
pub mod queue;
pub mod secrets;
pub mod store;
pub mod types;
pub mod workflow;

pub use app::{App, Job};
pub use client::{Client, ClientError, EnqueueOptions};
pub use queue::{JobContext, JobError};
