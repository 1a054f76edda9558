//! The workflow engine: starts runs, runs each step as a job, and moves a run forward in the
//! same transaction that records the step's effects and acknowledges its job.
//!
//! - **Forward**: the step job of step N runs the step's handler; a handler that writes to
//!   the database opens the step's [`StepTx`] (`ctx.tx()`), and its writes, step N's
//!   completion (with its output, the input of step N+1), the job of step N+1 and the
//!   acknowledgement of step N's job commit together. A worker that lost its lease commits
//!   nothing, so a step's database effect happens once. A handler that wrote nothing has the
//!   same completion recorded in a batch with other such steps (one transaction for many,
//!   each fenced and guarded on its own): that is what makes thousands of transitions per
//!   second possible.
//! - **Graphs**: a step may name the steps it needs (`needs`, see [`super::graph`]); the
//!   steps that need a completed one start once all they need is completed (decided under
//!   the run's lock), so independent branches run in parallel and a join starts once.
//! - **Failure**: when a step's job dies for good, the [`RunSweeper`] marks the step dead,
//!   stops the run's other live branches and queues the compensations of the completed
//!   steps, latest declared first (reverse topological order), each again a job; when they
//!   are done the run is `failed`, pointing at its dead step.
//! - **Retry**: an operator retries a failed run: its dead and undone steps and those
//!   downstream of them run again; completed steps upstream are not run again.
//! - **Concurrency key**: while a run of the workflow with the same key is active, a new one
//!   waits `queued`; the sweeper starts the oldest once the key is free.
//! - **Versions**: a run records the steps it started with (and their hash, its version) and
//!   follows them to its end, so a workflow file edited while runs are in flight changes only
//!   the runs started after the edit ([`Engine::steps_of`]).

use super::coalesce::Coalescer;
use super::definition::{StepDef, WorkflowCatalog, WorkflowDef};
use super::graph;
use crate::kinds::KindCatalog;
use crate::maintenance;
use crate::queue::{JobContext, JobError, Registry};
use crate::store::runs::{
    Compensations, CompletionOutcome, NextStep, RunCancel, RunId, RunRecord, RunStart, RunState,
    StepCompletion, StepState,
};
use crate::store::{SharedStore, StepTx, StoreError, StoreResult};
use crate::types::{FetchedJob, NewJob};
use async_trait::async_trait;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Runs in flight on a version of their workflow other than the loaded one (see
/// [`Engine::versions_in_flight`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionInFlight {
    pub workflow: String,
    pub version: String,
    pub runs: usize,
    /// Their steps that the current definition no longer has (they still run them).
    pub steps_gone: Vec<String>,
    /// Handlers their steps need that this binary does not register: they cannot finish here.
    pub handlers_missing: Vec<String>,
}

/// Why the engine refused a request.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("unknown workflow `{0}`")]
    UnknownWorkflow(String),
    #[error("invalid parameters for workflow `{workflow}`: {message}")]
    InvalidParams { workflow: String, message: String },
    #[error("no run {0}")]
    NoRun(RunId),
    #[error("run {id} is {state}; only a failed run can be retried")]
    NotRetryable { id: RunId, state: String },
    #[error("run {id} is {state}: it has ended and cannot be cancelled")]
    NotCancellable { id: RunId, state: String },
    /// A signal that does not apply (undeclared, already sent, to an ended run).
    #[error("{0}")]
    Signal(String),
    /// A signal the caller may not send.
    #[error("{0}")]
    SignalRefused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a step handler gets.
pub struct StepContext<'a> {
    pub run_id: RunId,
    pub step: &'a str,
    /// The step's position in the workflow.
    pub step_index: i32,
    pub params: &'a Value,
    /// The output of the step this one needs (by default the step before it); the run's
    /// parameters for a step that needs none; `{"<step>": output, …}` for a step that needs
    /// several (see `workflow::graph`). For a compensation, the output of the step undone.
    pub input: &'a Value,
    pub job: &'a FetchedJob,
    pub worker: &'a str,
    /// The step's transaction, opened by the first [`StepContext::tx`].
    tx: &'a mut Option<Box<dyn StepTx>>,
    /// Set by [`StepContext::fail_run`].
    failure: &'a mut Option<String>,
    store: &'a SharedStore,
    /// Report progress of a long step, visible to operators at once.
    pub progress: Progress,
    /// The job kinds, for building child jobs (see [`StepContext::fan_out`]).
    pub kinds: &'a KindCatalog,
    /// What the step waits for, when it is a durable wait (`wait.signal`, `wait.until`).
    pub wait: Option<&'a super::definition::Wait>,
    /// When the step was queued (its wait's timeout counts from then).
    pub queued_at: Option<chrono::DateTime<chrono::Utc>>,
    engine: &'a Engine,
}

impl StepContext<'_> {
    /// The store, for reads before the step's writes (which go through [`StepContext::tx`]).
    pub fn store(&self) -> &SharedStore {
        self.store
    }

    /// The time durable waits go by (see [`Engine::now`]).
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.engine.now()
    }

    /// The engine running this step, for handlers that call operations built on it (e.g. a
    /// maturity change at a module's sunset).
    pub fn engine(&self) -> Option<Arc<Engine>> {
        self.engine.me.upgrade()
    }

    /// The step's transaction: write the step's database effects here, they commit with the
    /// step's completion. Opened on first use; a step that never asks commits in a batch.
    pub async fn tx(&mut self) -> Result<&mut dyn StepTx, JobError> {
        let tx = match self.tx.take() {
            Some(tx) => tx,
            None => self
                .store
                .step_begin(self.job.lease(), self.worker)
                .await?
                .ok_or_else(|| JobError::Interrupted("lease lost before the step began".into()))?,
        };
        Ok(self.tx.insert(tx).as_mut())
    }

    /// The step's effects commit (its transaction, its output), but its outcome is a
    /// failure, e.g. an upgrade whose migration failed and was rolled back: the run
    /// compensates the earlier steps and ends `failed` with `reason`, not `completed`.
    pub fn fail_run(&mut self, reason: impl Into<String>) {
        *self.failure = Some(reason.into());
    }

    /// Start another workflow's run (see [`Engine::start`]). Not part of the step's
    /// transaction: give it an idempotency key, so a retried step finds the run it started.
    pub async fn start_run(
        &mut self,
        workflow: &str,
        params: Value,
        idempotency_key: String,
    ) -> Result<(RunId, bool), JobError> {
        self.engine
            .start(workflow, params, Some(idempotency_key))
            .await
            .map_err(|e| match e {
                EngineError::Store(e) => e.into(),
                other => JobError::Fatal(other.to_string()),
            })
    }

    /// Fan out: spawn one child job of `kind` per payload, in the step's transaction. The
    /// step then waits until every child has ended (completed, dead or cancelled); its output
    /// gains `"children": {"succeeded", "dead", "cancelled"}` and the run goes on.
    pub async fn fan_out(
        &mut self,
        kind: &str,
        payloads: impl IntoIterator<Item = (String, Value)>,
    ) -> Result<usize, JobError> {
        let spec = self
            .kinds
            .get(kind)
            .ok_or_else(|| JobError::Fatal(format!("fan-out to unknown job kind `{kind}`")))?;
        let jobs: Vec<NewJob> = payloads
            .into_iter()
            .map(|(tenant, payload)| NewJob {
                kind: spec.name.clone(),
                queue: spec.queue.clone(),
                tenant,
                payload,
                priority: spec.priority,
                max_attempts: spec.max_attempts,
                timeout_ms: spec.timeout.as_millis() as i64,
                unique_key: None,
                run_at: None,
            })
            .collect();
        let (run_id, step_index) = (self.run_id, self.step_index);
        Ok(self
            .tx()
            .await?
            .spawn_children(run_id, step_index, &jobs)
            .await?)
    }
}

/// Reports a running step's progress (see [`StepContext::progress`]).
#[derive(Clone)]
pub struct Progress {
    store: SharedStore,
    run_id: RunId,
    idx: i32,
}

impl Progress {
    /// Record `value` (e.g. `{"rows": 120000, "of": 1000000}`) as the step's progress.
    pub async fn report(&self, value: Value) -> StoreResult<()> {
        self.store
            .step_progress(self.run_id, self.idx, &value)
            .await
    }
}

/// What a step handler returns: its output (the next step's input).
pub type StepFuture<'a> = BoxFuture<'a, Result<Value, JobError>>;
type StepFn = Arc<dyn for<'a> Fn(StepContext<'a>) -> StepFuture<'a> + Send + Sync>;

/// Step handlers by name.
#[derive(Clone, Default)]
pub struct StepRegistry {
    handlers: HashMap<String, StepFn>,
}

impl StepRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register a step (or compensation) handler.
    pub fn register<F>(&mut self, name: &str, handler: F) -> &mut Self
    where
        F: for<'a> Fn(StepContext<'a>) -> StepFuture<'a> + Send + Sync + 'static,
    {
        self.handlers.insert(name.to_string(), Arc::new(handler));
        self
    }

    /// Is there a handler of this name?
    pub fn contains(&self, name: &str) -> bool {
        self.handlers.contains_key(name)
    }
}

/// The payload of a step job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepJob {
    #[serde(default)]
    pub run_id: RunId,
    pub step: i32,
    #[serde(default)]
    pub compensate: bool,
}

/// Starts, advances, fails, retries and cancels workflow runs.
pub struct Engine {
    store: SharedStore,
    workflows: Arc<WorkflowCatalog>,
    kinds: Arc<KindCatalog>,
    steps: StepRegistry,
    /// Run reads of step jobs, batched.
    reads: OnceLock<Coalescer<RunId, Option<RunRecord>>>,
    /// Completions of steps that wrote nothing to the database, batched.
    completions: OnceLock<Coalescer<StepCompletion, CompletionOutcome>>,
    /// Workflows whose current version's steps this engine has kept in the database.
    versions_kept: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Steps of other versions, read from the database once.
    other_versions: VersionCache,
    /// This engine, for step handlers that call operations built on it.
    me: std::sync::Weak<Engine>,
    /// Added to the clock that durable waits read (tests and drills move time forward).
    clock_offset_ms: std::sync::atomic::AtomicI64,
}

/// Steps of other versions than the loaded ones, by (workflow, version).
type VersionCache = std::sync::Mutex<HashMap<(String, String), Arc<Vec<StepDef>>>>;

/// Most requests one coalesced read or completion batch carries.
const COALESCE_MAX: usize = 500;

/// Coalesced batches of one kind (reads, completions) running at once. One at a time left
/// the database idle while the worker answered a batch: `workflow_steps` on PostgreSQL went
/// from ~9,400 transitions/s (1) to ~12,500 (2) and ~13,100 (3), `workflow_dag` from ~4,200
/// to ~8,700 (3); SQLite, whose writes take turns anyway, was unchanged (BENCHMARKS.md).
/// Completion batches never deadlock each other: each locks its jobs (its own) and then its
/// runs, both in id order.
const BATCHES_IN_FLIGHT: usize = 3;

impl Engine {
    /// An engine over validated workflows (their handlers and job kinds exist).
    pub fn new(
        store: SharedStore,
        workflows: WorkflowCatalog,
        kinds: KindCatalog,
        steps: StepRegistry,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            clock_offset_ms: Default::default(),
            store,
            workflows: Arc::new(workflows),
            kinds: Arc::new(kinds),
            steps,
            reads: OnceLock::new(),
            completions: OnceLock::new(),
            versions_kept: Default::default(),
            other_versions: Default::default(),
        })
    }

    fn reads(&self) -> &Coalescer<RunId, Option<RunRecord>> {
        self.reads.get_or_init(|| {
            let store = Arc::clone(&self.store);
            Coalescer::spawn(
                COALESCE_MAX,
                BATCHES_IN_FLIGHT,
                Arc::new(move |ids: Vec<RunId>| {
                    let store = Arc::clone(&store);
                    Box::pin(async move { store.runs_get_many(&ids).await })
                }),
            )
        })
    }

    fn completions(&self) -> &Coalescer<StepCompletion, CompletionOutcome> {
        self.completions.get_or_init(|| {
            let store = Arc::clone(&self.store);
            Coalescer::spawn(
                COALESCE_MAX,
                BATCHES_IN_FLIGHT,
                Arc::new(move |items: Vec<StepCompletion>| {
                    let store = Arc::clone(&store);
                    Box::pin(async move { store.steps_complete_many(&items).await })
                }),
            )
        })
    }

    /// The store this engine runs on.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// The workflows this engine runs.
    pub fn kinds(&self) -> &KindCatalog {
        &self.kinds
    }

    /// The workflow definitions.
    pub fn workflows(&self) -> &WorkflowCatalog {
        &self.workflows
    }

    /// Register the job handler of every job kind a workflow step runs as.
    pub fn register_jobs(self: &Arc<Self>, registry: &mut Registry) {
        let mut kinds: Vec<&str> = self
            .workflows
            .iter()
            .flat_map(|w| w.steps.iter().map(|s| s.job.as_str()))
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        for kind in kinds {
            let engine = Arc::clone(self);
            registry.register(kind, move |args: StepJob, ctx: JobContext| {
                let engine = Arc::clone(&engine);
                async move { engine.run_step(args, ctx).await }
            });
        }
    }

    /// Whether `run` was started with idempotency key `key` (given to [`Engine::start`]).
    pub fn started_with_key(run: &RunRecord, key: &str) -> bool {
        run.idempotency_key.as_deref() == Some(stored_key(&run.workflow, key).as_str())
    }

    /// Start a run. With an idempotency key that already has a run of this workflow, that
    /// run is returned (`false`: nothing new was started). Keys are stored as
    /// `<workflow>:<key>`.
    pub async fn start(
        &self,
        workflow: &str,
        params: Value,
        idempotency_key: Option<String>,
    ) -> Result<(RunId, bool), EngineError> {
        let def = self
            .workflows
            .get(workflow)
            .ok_or_else(|| EngineError::UnknownWorkflow(workflow.to_string()))?;
        let params = complete_params(def, params)?;
        let concurrency_key = def
            .concurrency_key
            .as_ref()
            .map(|template| render_key(template, &params));
        self.keep_version(def).await?;
        let start = RunStart {
            workflow: def.name.clone(),
            params,
            idempotency_key: idempotency_key.map(|key| stored_key(&def.name, &key)),
            concurrency_key,
            step_names: def.steps.iter().map(|s| s.name.clone()).collect(),
            version: def.version.clone(),
            first_jobs: self.first_steps(&def.name, &def.steps)?,
        };
        Ok(self.store.run_start(&start).await?)
    }

    /// Retry a failed run: its dead steps, the steps its compensation undid and every step
    /// downstream of those run again (nothing runs on work that was rolled back); completed
    /// steps upstream of them do not. In a chain that is resuming at the dead step, or at the
    /// earliest undone one.
    pub async fn retry(&self, id: RunId) -> Result<(), EngineError> {
        let run = self
            .store
            .run_get(id)
            .await?
            .ok_or(EngineError::NoRun(id))?;
        let steps = self
            .steps_of(&run)
            .await
            .ok_or_else(|| EngineError::UnknownWorkflow(run.workflow.clone()))?;
        let not_retryable = || EngineError::NotRetryable {
            id,
            state: run.state.to_string(),
        };
        if run.state != crate::store::runs::RunState::Failed {
            return Err(not_retryable());
        }
        let redo = graph::to_redo(&steps, &run);
        let jobs = graph::ready_after_reset(&steps, &run, &redo)
            .into_iter()
            .map(|at| self.next_step(&run.workflow, &steps, at, Vec::new()))
            .collect::<Result<Vec<_>, _>>()?;
        let redo: Vec<i32> = redo
            .into_iter()
            .filter_map(|at| i32::try_from(at).ok())
            .collect();
        if self
            .store
            .run_retry(id, run.current_step, &redo, jobs)
            .await?
        {
            Ok(())
        } else {
            Err(not_retryable())
        }
    }

    /// Cancel a run on behalf of `by`: every live step stops, its completed steps'
    /// compensations run, latest first (as when a step dies), then the run is `cancelled`; a
    /// run with nothing to undo is `cancelled` at once. A run already compensating finishes
    /// and ends `cancelled`. Refused for a run that has ended.
    pub async fn cancel(&self, id: RunId, by: &str) -> Result<(), EngineError> {
        // The run may move on between the read and the write: read again (a few times).
        for _ in 0..5 {
            let run = self.run(id).await?;
            if matches!(
                run.state,
                RunState::Completed | RunState::Failed | RunState::Cancelled
            ) {
                return Err(EngineError::NotCancellable {
                    id,
                    state: run.state.to_string(),
                });
            }
            // Every compensation, whatever the state read: the store undoes the steps that
            // are completed when it writes (a queued run may have started, and completed a
            // step, since this read).
            let compensations = match self.steps_of(&run).await {
                Some(steps) => self.compensations(&run.workflow, &steps, i32::MAX),
                None => Vec::new(),
            };
            let cancel = RunCancel {
                id,
                by: by.to_string(),
                current_step: run.current_step,
                compensations,
            };
            if self.store.run_cancel(&cancel).await? {
                return Ok(());
            }
        }
        Err(EngineError::Store(StoreError::Conflict(format!(
            "run {id} kept moving while it was being cancelled: try again"
        ))))
    }

    /// The run a workflow-step job belongs to, when `job` is one (its kind runs workflow
    /// steps and its payload names a run).
    pub fn run_of_job(&self, kind: &str, payload: &Value) -> Option<RunId> {
        let runs_steps = self
            .workflows
            .iter()
            .any(|w| w.steps.iter().any(|s| s.job == kind));
        if !runs_steps {
            return None;
        }
        serde_json::from_value::<StepJob>(payload.clone())
            .ok()
            .map(|step| step.run_id)
            .filter(|id| *id > 0)
    }

    /// A run with its steps.
    pub async fn run(&self, id: RunId) -> Result<RunRecord, EngineError> {
        self.store.run_get(id).await?.ok_or(EngineError::NoRun(id))
    }

    /// The time durable waits go by: the clock, plus the offset [`Engine::set_clock_offset`]
    /// set (none in production).
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        let offset = self
            .clock_offset_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        chrono::Utc::now() + chrono::Duration::milliseconds(offset)
    }

    /// Move the clock of durable waits by `offset` (a test or a drill of what happens when a
    /// date passes, without waiting for it).
    pub fn set_clock_offset(&self, offset: chrono::Duration) {
        self.clock_offset_ms.store(
            offset.num_milliseconds(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Keep the steps of `def`'s version in the database (once per process and workflow),
    /// so that runs started on it can finish on it after the file changes.
    async fn keep_version(&self, def: &WorkflowDef) -> Result<(), EngineError> {
        let kept = |set: &std::collections::HashSet<String>| set.contains(&def.name);
        if kept(&self.versions_kept.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(());
        }
        let steps = serde_json::to_value(&def.steps).unwrap_or(Value::Null);
        self.store
            .workflow_version_put(&def.name, &def.version, &steps)
            .await?;
        self.versions_kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(def.name.clone());
        Ok(())
    }

    /// The steps `run` follows: those of the version it started on, so that a workflow file
    /// edited meanwhile does not change it (the loaded definition's own when the versions
    /// agree, or when the run predates recorded versions). `None` when neither is known.
    pub async fn steps_of(&self, run: &RunRecord) -> Option<Cow<'_, [StepDef]>> {
        let current = self.workflows.get(&run.workflow);
        let version = match (&run.version, current) {
            (Some(version), Some(def)) if *version == def.version => {
                return Some(Cow::Borrowed(def.steps.as_slice()));
            }
            (None, Some(def)) => return Some(Cow::Borrowed(def.steps.as_slice())),
            (None, None) => return None,
            (Some(version), _) => version,
        };
        let key = (run.workflow.clone(), version.clone());
        let cached = self
            .other_versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let steps = match cached {
            Some(steps) => steps,
            None => {
                let stored = self
                    .store
                    .workflow_version_get(&run.workflow, version)
                    .await
                    .map_err(|err| tracing::warn!(run_id = run.id, error = %err, "cannot read a workflow version"))
                    .ok()??;
                let steps: Vec<StepDef> = serde_json::from_value(stored)
                    .map_err(|err| tracing::error!(run_id = run.id, error = %err, "a workflow version's steps do not parse"))
                    .ok()?;
                let steps = Arc::new(steps);
                self.other_versions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, Arc::clone(&steps));
                steps
            }
        };
        Some(Cow::Owned(steps.as_ref().clone()))
    }

    /// Send signal `name` (with `payload`) to run `id`, by `actor` with `role` (`None`: one of
    /// steward's operations). Only signals the run's workflow declares, only by the roles it
    /// names (an empty list: operations only), only to a run that has not ended, and once.
    /// A `wait.signal` step waiting for it completes at once.
    pub async fn signal(
        &self,
        id: RunId,
        name: &str,
        payload: &Value,
        actor: &str,
        role: Option<&str>,
    ) -> Result<(), EngineError> {
        let run = self.run(id).await?;
        let def = self
            .workflows
            .get(&run.workflow)
            .ok_or_else(|| EngineError::UnknownWorkflow(run.workflow.clone()))?;
        let declared = def.signals.iter().find(|s| s.name == name).ok_or_else(|| {
            EngineError::Signal(format!(
                "workflow `{}` declares no signal `{name}`",
                def.name
            ))
        })?;
        if let Some(role) = role
            && !declared.sent_by.iter().any(|r| r == role)
        {
            return Err(EngineError::SignalRefused(format!(
                "signal `{name}` of workflow `{}` is not sent by {role}",
                def.name
            )));
        }
        if matches!(
            run.state,
            RunState::Completed | RunState::Failed | RunState::Cancelled
        ) {
            return Err(EngineError::Signal(format!(
                "run {id} is {}: it takes no more signals",
                run.state
            )));
        }
        if !self.store.run_signal_send(id, name, payload, actor).await? {
            return Err(EngineError::Signal(format!(
                "signal `{name}` was already sent to run {id}"
            )));
        }
        // A step that was looking for the signal just as it came (its job running, about to
        // park) missed the wake-up: wake it again a few times shortly after. (A waiting step
        // also looks again at least every minute.)
        let store = Arc::clone(&self.store);
        tokio::spawn(async move {
            for ms in [50, 250, 1000, 3000] {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                if matches!(store.run_wake(id).await, Ok(true)) {
                    return;
                }
            }
        });
        Ok(())
    }

    /// Runs in flight (queued, running or compensating) on another version of their workflow
    /// than this engine's: they finish on their own steps, and this says which of those the
    /// current file no longer has, and which handlers this binary lacks (such runs cannot
    /// finish here). Reported at start-up.
    pub async fn versions_in_flight(&self) -> StoreResult<Vec<VersionInFlight>> {
        let mut found: Vec<VersionInFlight> = Vec::new();
        for state in [RunState::Queued, RunState::Running, RunState::Compensating] {
            let page = crate::store::runs::RunPage {
                state: Some(state),
                limit: 10_000,
                ..Default::default()
            };
            for run in self.store.runs_page(&page).await? {
                let current = self.workflows.get(&run.workflow);
                let (Some(version), Some(steps)) = (&run.version, self.steps_of(&run).await) else {
                    continue;
                };
                if current.is_some_and(|def| def.version == *version) {
                    continue;
                }
                if let Some(seen) = found
                    .iter_mut()
                    .find(|f| f.workflow == run.workflow && f.version == *version)
                {
                    seen.runs += 1;
                    continue;
                }
                let kept = |name: &str| {
                    current.is_some_and(|def| def.steps.iter().any(|s| s.name == name))
                };
                found.push(VersionInFlight {
                    workflow: run.workflow.clone(),
                    version: version.clone(),
                    runs: 1,
                    steps_gone: steps
                        .iter()
                        .filter(|s| !kept(&s.name))
                        .map(|s| s.name.clone())
                        .collect(),
                    handlers_missing: steps
                        .iter()
                        .flat_map(|s| std::iter::once(&s.handler).chain(s.compensate.as_ref()))
                        .filter(|h| !self.steps.handlers.contains_key(h.as_str()))
                        .cloned()
                        .collect(),
                });
            }
        }
        Ok(found)
    }

    fn step_job(
        &self,
        workflow: &str,
        steps: &[StepDef],
        idx: i32,
        compensate: bool,
    ) -> Result<NewJob, EngineError> {
        let step = usize::try_from(idx)
            .ok()
            .and_then(|i| steps.get(i))
            .ok_or_else(|| EngineError::InvalidParams {
                workflow: workflow.to_string(),
                message: format!("no step {idx}"),
            })?;
        let kind = self
            .kinds
            .get(&step.job)
            .ok_or_else(|| EngineError::InvalidParams {
                workflow: workflow.to_string(),
                message: format!("job kind `{}` is not declared", step.job),
            })?;
        Ok(NewJob {
            kind: kind.name.clone(),
            queue: kind.queue.clone(),
            tenant: String::new(),
            payload: json!({"run_id": 0, "step": idx, "compensate": compensate}),
            priority: kind.priority,
            max_attempts: kind.max_attempts,
            timeout_ms: kind.timeout.as_millis() as i64,
            unique_key: None,
            run_at: None,
        })
    }

    /// The job of step `idx`, to start once the steps in `needs` are completed.
    fn next_step(
        &self,
        workflow: &str,
        steps: &[StepDef],
        idx: usize,
        needs: Vec<i32>,
    ) -> Result<NextStep, EngineError> {
        let idx = i32::try_from(idx).map_err(|_| EngineError::InvalidParams {
            workflow: workflow.to_string(),
            message: format!("no step {idx}"),
        })?;
        Ok(NextStep {
            idx,
            job: self.step_job(workflow, steps, idx, false)?,
            needs,
        })
    }

    /// The jobs of the steps a run starts with (those that need none).
    fn first_steps(&self, workflow: &str, steps: &[StepDef]) -> Result<Vec<NextStep>, EngineError> {
        graph::roots(steps)
            .into_iter()
            .map(|at| self.next_step(workflow, steps, at, Vec::new()))
            .collect()
    }

    /// The jobs of the steps that need step `idx`, each with everything it needs (the store
    /// starts one once all of that is completed).
    fn next_steps(
        &self,
        workflow: &str,
        steps: &[StepDef],
        idx: usize,
    ) -> Result<Vec<NextStep>, EngineError> {
        graph::children(steps, idx)
            .into_iter()
            .map(|at| self.next_step(workflow, steps, at, graph::parents(steps, at)))
            .collect()
    }

    /// The compensations a run may run next, below step `below`, latest step first (the
    /// declared order is topological, so this is reverse topological order): every step
    /// with a compensation handler; the store starts the first whose step is completed.
    fn compensations(&self, workflow: &str, steps: &[StepDef], below: i32) -> Compensations {
        (0..steps.len())
            .rev()
            .filter(|&at| steps[at].compensate.is_some())
            .filter_map(|at| i32::try_from(at).ok())
            .filter(|&idx| idx < below)
            .filter_map(|idx| {
                self.step_job(workflow, steps, idx, true)
                    .ok()
                    .map(|job| NextStep {
                        idx,
                        job,
                        needs: Vec::new(),
                    })
            })
            .collect()
    }

    async fn run_step(&self, args: StepJob, ctx: JobContext) -> Result<(), JobError> {
        let fatal = |m: String| JobError::Fatal(m);
        let run = self
            .reads()
            .call(args.run_id)
            .await?
            .ok_or_else(|| fatal(format!("run {} does not exist", args.run_id)))?;
        let steps = self
            .steps_of(&run)
            .await
            .ok_or_else(|| fatal(format!("workflow `{}` is not defined here", run.workflow)))?;
        let idx = usize::try_from(args.step).map_err(|_| fatal("negative step".into()))?;
        let (step, record) = steps
            .get(idx)
            .zip(run.steps.get(idx))
            .ok_or_else(|| fatal(format!("run {} has no step {idx}", run.id)))?;
        let expected = if args.compensate {
            StepState::Compensating
        } else {
            StepState::Queued
        };
        let current_job = match args.compensate {
            true => record.compensation.as_ref().map(|c| c.job_id),
            false => record.job_id,
        };
        if record.state != expected || current_job != Some(ctx.job.id) {
            // A duplicate or superseded delivery (the run moved on, or was cancelled).
            return Ok(());
        }
        let handler_name = if args.compensate {
            step.compensate.as_deref().unwrap_or_default()
        } else {
            step.handler.as_str()
        };
        let handler = self
            .steps
            .handlers
            .get(handler_name)
            .ok_or_else(|| fatal(format!("no step handler `{handler_name}` on this worker")))?;
        let input = if args.compensate {
            record.output.clone().unwrap_or(Value::Null)
        } else {
            graph::input_of(&steps, &run, idx)
        };
        let mut opened: Option<Box<dyn StepTx>> = None;
        let mut failure: Option<String> = None;
        let output = handler(StepContext {
            run_id: run.id,
            step: &step.name,
            step_index: args.step,
            kinds: &self.kinds,
            wait: step.wait.as_ref(),
            queued_at: record.started_at,
            params: &run.params,
            input: &input,
            job: &ctx.job,
            worker: &ctx.worker,
            tx: &mut opened,
            failure: &mut failure,
            store: &self.store,
            engine: self,
            progress: Progress {
                store: self.store.clone(),
                run_id: run.id,
                idx: args.step,
            },
        })
        .await?;
        if args.compensate {
            let next = self.compensations(&run.workflow, &steps, args.step);
            let mut tx = self.open_tx(opened, &ctx).await?;
            let recorded = tx.step_compensated(run.id, args.step, next).await;
            return finish(tx, recorded, &ctx, run.id).await;
        }
        if let Some(reason) = failure {
            // The step's effects commit; the run fails (after compensating completed steps).
            let compensations = self.compensations(&run.workflow, &steps, i32::MAX);
            let mut tx = self.open_tx(opened, &ctx).await?;
            let recorded = tx
                .step_failed(run.id, args.step, &output, &reason, compensations)
                .await;
            return finish(tx, recorded, &ctx, run.id).await;
        }
        let next = self
            .next_steps(&run.workflow, &steps, idx)
            .map_err(|e| fatal(e.to_string()))?;
        let Some(mut tx) = opened else {
            // The handler wrote nothing: its completion goes into the next batch.
            let completion = StepCompletion {
                lease: ctx.job.lease(),
                worker: ctx.worker.to_string(),
                run_id: run.id,
                idx: args.step,
                output,
                next,
                chain: graph::is_chain(&steps),
            };
            ctx.mark_committing();
            return match self.completions().call(completion).await? {
                CompletionOutcome::Applied => {
                    ctx.mark_acknowledged();
                    Ok(())
                }
                CompletionOutcome::Stale => {
                    tracing::info!(run_id = run.id, "step skipped: the run moved on");
                    Ok(())
                }
                CompletionOutcome::LeaseLost => Err(JobError::Interrupted(
                    "lease lost before the step committed".into(),
                )),
            };
        };
        let recorded = if tx.spawned() > 0 {
            // Fan-out: the sweeper completes the step once every child has ended.
            tx.step_waiting(run.id, args.step, &output).await
        } else {
            tx.step_completed(run.id, args.step, &output, next).await
        };
        finish(tx, recorded, &ctx, run.id).await
    }

    /// The step's transaction: the one its handler opened, or a new one.
    async fn open_tx(
        &self,
        opened: Option<Box<dyn StepTx>>,
        ctx: &JobContext,
    ) -> Result<Box<dyn StepTx>, JobError> {
        match opened {
            Some(tx) => Ok(tx),
            None => self
                .store
                .step_begin(ctx.job.lease(), &ctx.worker)
                .await?
                .ok_or_else(|| JobError::Interrupted("lease lost before the step began".into())),
        }
    }

    /// One sweep: runs whose current step died get their compensations queued (or fail), and
    /// fanned-out steps whose children have all ended are completed (fan-in).
    pub async fn sweep_once(&self) -> StoreResult<u64> {
        let mut handled = 0;
        // Queued runs whose concurrency key came free start now.
        for run_id in self.store.runs_promotable(500).await? {
            let Some(run) = self.store.run_get(run_id).await? else {
                continue;
            };
            let Some(steps) = self.steps_of(&run).await else {
                continue;
            };
            let first = match self.first_steps(&run.workflow, &steps) {
                Ok(first) => first,
                Err(err) => {
                    tracing::error!(run_id, error = %err, "cannot build the first step");
                    continue;
                }
            };
            if self.store.run_promote(run_id, first).await? {
                handled += 1;
            }
        }
        for (run_id, idx) in self.store.runs_fanned_in(500).await? {
            let Some(run) = self.store.run_get(run_id).await? else {
                continue;
            };
            let Some(steps) = self.steps_of(&run).await else {
                continue;
            };
            let next = match usize::try_from(idx)
                .map_err(|_| EngineError::NoRun(run_id))
                .and_then(|at| self.next_steps(&run.workflow, &steps, at))
            {
                Ok(next) => next,
                Err(err) => {
                    tracing::error!(run_id, error = %err, "cannot build the next steps");
                    continue;
                }
            };
            if self.store.run_fan_in(run_id, idx, next).await? {
                handled += 1;
            }
        }
        for dead in self.store.runs_dead_steps(500).await? {
            let Some(run) = self.store.run_get(dead.run_id).await? else {
                continue;
            };
            // A worker without this workflow's definition (a rolling deploy) leaves the run
            // to one that has it, rather than failing it without compensation.
            let Some(steps) = self.steps_of(&run).await else {
                continue;
            };
            let compensations = if dead.compensating {
                Vec::new()
            } else {
                self.compensations(&run.workflow, &steps, i32::MAX)
            };
            if self.store.run_step_died(&dead, compensations).await? {
                handled += 1;
            }
        }
        Ok(handled)
    }
}

/// Commit a step transaction whose step was recorded (`recorded`), acknowledging the job.
async fn finish(
    tx: Box<dyn StepTx>,
    recorded: StoreResult<()>,
    ctx: &JobContext,
    run_id: RunId,
) -> Result<(), JobError> {
    match recorded {
        Ok(()) => {}
        // The run moved on meanwhile (failed, cancelled, advanced by another delivery):
        // the attempt ends without effect (its transaction rolls back on drop).
        Err(StoreError::Stale(why)) => {
            tracing::info!(run_id, %why, "step skipped");
            return Ok(());
        }
        Err(err) => return Err(err.into()),
    }
    ctx.mark_committing();
    match tx.commit().await {
        Ok(()) => {
            ctx.mark_acknowledged();
            Ok(())
        }
        Err(StoreError::Conflict(why)) => Err(JobError::Interrupted(why)),
        Err(err) => Err(err.into()),
    }
}

/// A concurrency-key template with its `{param}` placeholders filled (validated at load:
/// every placeholder names a parameter; a missing optional one renders empty).
fn render_key(template: &str, params: &Value) -> String {
    let mut key = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        key.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let name = &rest[open + 1..open + close];
        match params.get(name) {
            Some(Value::String(text)) => key.push_str(text),
            Some(Value::Null) | None => {}
            Some(other) => key.push_str(&other.to_string()),
        }
        rest = &rest[open + close + 1..];
    }
    key.push_str(rest);
    key
}

/// Fill defaults, refuse unknown and missing parameters (the declared-fields check every
/// definition shares: [`crate::fields::complete`]).
fn complete_params(def: &WorkflowDef, params: Value) -> Result<Value, EngineError> {
    crate::fields::complete(&def.params, params, "parameter").map_err(|message| {
        EngineError::InvalidParams {
            workflow: def.name.clone(),
            message,
        }
    })
}

/// Maintenance service: hands runs whose step died to the engine (see [`Engine::sweep_once`]).
pub struct RunSweeper {
    pub engine: Arc<Engine>,
    pub every: Duration,
}

#[async_trait]
impl maintenance::Service for RunSweeper {
    fn name(&self) -> &'static str {
        "run_sweeper"
    }
    fn interval(&self) -> Duration {
        self.every
    }
    async fn run_once(&self, _store: &SharedStore) -> StoreResult<u64> {
        self.engine.sweep_once().await
    }
}

/// A run's idempotency key as stored: under its workflow's name (which holds no `:`), so a
/// key given to one workflow can never take another's run.
fn stored_key(workflow: &str, key: &str) -> String {
    format!("{workflow}:{key}")
}
