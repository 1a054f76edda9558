//! steward as a library with its command line: a Rust service registers its own job kinds
//! and workflow step handlers, typed, and runs steward's whole CLI (`worker`, `serve`,
//! `enqueue`, `run`, `migrate`, …) with them. The `steward` binary is this builder with
//! nothing added.
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use steward::app::{App, Job};
//!
//! #[derive(Serialize, Deserialize)]
//! struct SendInvoice {
//!     invoice_id: i64,
//! }
//!
//! impl Job for SendInvoice {
//!     const KIND: &'static str = "send_invoice";
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     App::new()
//!         .job(|invoice: SendInvoice, _ctx| async move {
//!             println!("sending invoice {}", invoice.invoice_id);
//!             Ok(())
//!         })
//!         .step("billing.close_month", |ctx| {
//!             Box::pin(async move { Ok(ctx.input.clone()) })
//!         })
//!         .run_cli()
//! }
//! ```
//!
//! A kind registered in code needs no `jobs/<kind>.toml`: it runs on [`Job::QUEUE`] with the
//! defaults of [`JobKind::new`]. A `jobs/<kind>.toml` of the same name, when there is one,
//! sets its limits (queue, attempts, backoff, timeout) and who may enqueue it over the API.

use crate::kinds::{JobKind, KindCatalog, KindError};
use crate::queue::{JobContext, JobError, Registry};
use crate::workflow::{StepContext, StepFuture, StepRegistry};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::{Arc, OnceLock};

/// A job kind's arguments, as a Rust type: the handler receives them decoded, the client
/// enqueues them typed ([`crate::Client::enqueue_job`]).
pub trait Job: Serialize + DeserializeOwned + Send + 'static {
    /// The kind's name (as `jobs/*.toml` and the API name it).
    const KIND: &'static str;
    /// Its queue when no `jobs/<kind>.toml` names one.
    const QUEUE: &'static str = "default";
}

type JobRegistration = Arc<dyn Fn(&mut Registry) + Send + Sync>;
type StepRegistration = Arc<dyn Fn(&mut StepRegistry) + Send + Sync>;

/// What an [`App`] adds to the built-in kinds and steps.
#[derive(Clone, Default)]
pub struct Extensions {
    kinds: Vec<JobKind>,
    jobs: Vec<JobRegistration>,
    steps: Vec<StepRegistration>,
}

static EXTENSIONS: OnceLock<Extensions> = OnceLock::new();

/// The extensions of this process's [`App`] (none for the plain `steward` binary).
pub(crate) fn extensions() -> &'static Extensions {
    EXTENSIONS.get_or_init(Extensions::default)
}

impl Extensions {
    /// Add the kinds registered in code that `jobs/` does not declare (with their defaults).
    pub(crate) fn add_kinds(&self, catalog: &mut KindCatalog) -> Result<(), KindError> {
        for kind in &self.kinds {
            if catalog.get(&kind.name).is_none() {
                catalog.add(kind.clone())?;
            }
        }
        Ok(())
    }

    /// Register the job handlers added in code.
    pub(crate) fn register_jobs(&self, registry: &mut Registry) {
        for register in &self.jobs {
            register(registry);
        }
    }

    /// Register the step handlers added in code.
    pub(crate) fn register_steps(&self, steps: &mut StepRegistry) {
        for register in &self.steps {
            register(steps);
        }
    }
}

/// steward's command line with a service's own job kinds and step handlers.
#[derive(Default)]
pub struct App {
    extensions: Extensions,
}

impl App {
    /// The built-in kinds and steps only (what the `steward` binary runs).
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a job kind, [`Job::KIND`], whose handler receives its arguments decoded.
    pub fn job<J, F, Fut>(mut self, handler: F) -> Self
    where
        J: Job,
        F: Fn(J, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        self.extensions.kinds.push(JobKind::new(J::KIND, J::QUEUE));
        let handler = Arc::new(handler);
        self.extensions.jobs.push(Arc::new(move |registry| {
            let handler = Arc::clone(&handler);
            registry.register(J::KIND, move |args: J, ctx| handler(args, ctx));
        }));
        self
    }

    /// Add a workflow step handler that `workflows/*.toml` can name.
    pub fn step<F>(mut self, name: &str, handler: F) -> Self
    where
        F: for<'a> Fn(StepContext<'a>) -> StepFuture<'a> + Send + Sync + 'static,
    {
        let name = name.to_string();
        let handler = Arc::new(handler);
        self.extensions.steps.push(Arc::new(move |steps| {
            let handler = Arc::clone(&handler);
            steps.register(&name, move |ctx| handler(ctx));
        }));
        self
    }

    /// Parse the command line and run it, with these kinds and steps.
    pub fn run_cli(self) -> std::process::ExitCode {
        // One App per process: a second call keeps the first one's extensions.
        let _ = EXTENSIONS.set(self.extensions);
        crate::cli::main()
    }
}
