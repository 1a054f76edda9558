//! Storage of workflow runs: the run and step tables, and the step transaction in which a
//! step's database effects, its completion, the next step's job and the acknowledgement of
//! the step's own job commit together (or not at all).

use super::StoreResult;
use crate::types::{JobId, Lease, NewJob};
use async_trait::async_trait;
use serde_json::Value;

pub use crate::types::runs::{
    Compensations, CompletionOutcome, DeadStep, NextStep, RunCancel, RunId, RunPage, RunRecord,
    RunStart, RunState, SignalRecord, StepCompensation, StepCompletion, StepRecord, StepState,
};

/// Run storage; every [`super::JobStore`] implements it.
#[async_trait]
pub trait RunStore: Send + Sync {
    /// Create a run, its steps and the jobs of the steps it starts with in one transaction.
    /// With an idempotency key that already has a run, returns that run and creates nothing.
    /// While another run of the workflow with the same concurrency key is active (or queued),
    /// the run is created `queued`, without a job. Each job's payload gets `"run_id"`.
    async fn run_start(&self, start: &RunStart) -> StoreResult<(RunId, bool)>;

    /// One run with its steps.
    async fn run_get(&self, id: RunId) -> StoreResult<Option<RunRecord>>;

    /// Several runs with their steps, in the order of `ids` (`None` for a missing one).
    async fn runs_get_many(&self, ids: &[RunId]) -> StoreResult<Vec<Option<RunRecord>>>;

    /// Record step completions, each as if by its own [`StepTx`] (fenced on its lease,
    /// guarded on its run's current step, with the next step's job and its acknowledgement),
    /// in as few transactions as the backend can. Outcomes are in the order of `items`.
    async fn steps_complete_many(
        &self,
        items: &[StepCompletion],
    ) -> StoreResult<Vec<CompletionOutcome>>;

    /// Runs by id, newest first, optionally in one state.
    async fn runs_list(&self, state: Option<RunState>, limit: i64) -> StoreResult<Vec<RunRecord>> {
        self.runs_page(&RunPage {
            state,
            limit,
            ..RunPage::default()
        })
        .await
    }

    /// A page of runs, newest first: older than `before_id`, or the page just newer than
    /// `after_id`.
    async fn runs_page(&self, page: &RunPage) -> StoreResult<Vec<RunRecord>>;

    /// How many runs each workflow has in each state (the run outcomes of `/metrics`).
    async fn runs_count_by_state(&self) -> StoreResult<Vec<(String, RunState, i64)>>;

    /// Open the transaction of a step attempt; `None` when the lease is no longer this
    /// worker's (the attempt must do nothing). The lease is checked again by
    /// [`StepTx::commit`], which acknowledges the job in the same transaction.
    async fn step_begin(&self, lease: Lease, worker: &str) -> StoreResult<Option<Box<dyn StepTx>>>;

    /// Runs whose current step (or compensation) job is dead, not yet handled.
    async fn runs_dead_steps(&self, limit: i64) -> StoreResult<Vec<DeadStep>>;

    /// Record that a step died: its run's other live steps stop (their jobs and a
    /// fanned-out step's live children are cancelled, the steps pending again), and the run
    /// compensates (queuing the first of `compensations` whose step is completed) or, with
    /// none, fails. A dead compensation fails the run. Applies only if the step is still
    /// the job's.
    async fn run_step_died(
        &self,
        dead: &DeadStep,
        compensations: Compensations,
    ) -> StoreResult<bool>;

    /// Retry a failed run: the steps in `redo` go back to pending and `jobs` (the steps
    /// ready once they are) are queued. Applies only if the run is still failed at step
    /// `failed_step` (a stale retry changes nothing).
    async fn run_retry(
        &self,
        id: RunId,
        failed_step: i32,
        redo: &[i32],
        jobs: Vec<NextStep>,
    ) -> StoreResult<bool>;

    /// Cancel a run (see [`RunCancel`]): every live step stops (its job and a fanned-out
    /// step's live children are cancelled, the step pending again); with a completed step to
    /// undo the run is `compensating` and ends `cancelled` once its compensations are done,
    /// without one it is `cancelled` at once. A run already compensating only records who
    /// cancelled it (it still finishes undoing its work). Applies only if the run is still at
    /// `current_step` (else `false`: read again).
    async fn run_cancel(&self, cancel: &RunCancel) -> StoreResult<bool>;

    /// Record signal `name` for a run (once: `false` when it was sent already) and wake the
    /// run's current step job if it waits, so a `wait.signal` step sees it now.
    async fn run_signal_send(
        &self,
        run_id: RunId,
        name: &str,
        payload: &Value,
        sent_by: &str,
    ) -> StoreResult<bool>;

    /// Keep the steps of a workflow's version (once; again changes nothing).
    async fn workflow_version_put(
        &self,
        workflow: &str,
        version: &str,
        steps: &Value,
    ) -> StoreResult<()>;

    /// The steps of a workflow's version, if kept.
    async fn workflow_version_get(
        &self,
        workflow: &str,
        version: &str,
    ) -> StoreResult<Option<Value>>;

    /// Make the jobs of a run's live steps due now if they wait (scheduled); `true` when one
    /// did.
    async fn run_wake(&self, run_id: RunId) -> StoreResult<bool>;

    /// A signal sent to a run, if it was.
    async fn run_signal_get(&self, run_id: RunId, name: &str) -> StoreResult<Option<SignalRecord>>;

    /// Queued runs whose concurrency key is free, oldest first per key.
    async fn runs_promotable(&self, limit: i64) -> StoreResult<Vec<RunId>>;

    /// Start a queued run (its key must still be free): `running`, the jobs of the steps it
    /// starts with queued.
    async fn run_promote(&self, id: RunId, first_jobs: Vec<NextStep>) -> StoreResult<bool>;

    /// Steps waiting for their children (fan-out) whose children have all ended.
    async fn runs_fanned_in(&self, limit: i64) -> StoreResult<Vec<(RunId, i32)>>;

    /// Complete a waiting step whose children all ended: its output gets
    /// `"children": {"succeeded", "dead", "cancelled"}`; then as
    /// [`StepTx::step_completed`]. Applies only if the step is still waiting and no child is
    /// live.
    async fn run_fan_in(&self, run_id: RunId, idx: i32, next: Vec<NextStep>) -> StoreResult<bool>;

    /// Record a running step's progress, visible at once (outside the step's transaction).
    async fn step_progress(&self, run_id: RunId, idx: i32, progress: &Value) -> StoreResult<()>;
}

/// The transaction of one step attempt. Dropping it without [`StepTx::commit`] rolls back.
#[async_trait]
pub trait StepTx: Send {
    /// Module lifecycle: create a module version's tables in this database once (under a
    /// lock; a later call finds them created and does nothing), with the `(tenant_id,
    /// created_at)` index, audit triggers and, where the backend has them, grants to
    /// `tenant_app_role` and row-level security. A failing migration leaves nothing behind
    /// and returns [`super::StoreError::Migration`]; the transaction stays usable.
    async fn module_migrate(
        &mut self,
        module: &str,
        version_id: i64,
    ) -> StoreResult<super::domain::MigrationReport>;

    /// Module lifecycle: upgrade a module's tables to `version_id`, all in one savepoint: the
    /// version's pre-upgrade SQL, the migration of every version not yet migrated (as
    /// [`StepTx::module_migrate`]), then its post-upgrade SQL once per tenant with
    /// `app.current_tenant_id` set (PostgreSQL; once on SQLite, which has no settings). Any
    /// failure rolls all of it back ([`super::StoreError::Migration`]); the transaction stays
    /// usable.
    async fn module_upgrade(
        &mut self,
        module: &str,
        version_id: i64,
        tenants: &[super::domain::TenantId],
    ) -> StoreResult<super::domain::MigrationReport>;

    /// Module lifecycle: delete one tenant's rows from a module table, exactly `expected` of
    /// them (the rows its export holds); any other count is a [`super::StoreError::Conflict`]
    /// and the step's transaction must not commit.
    async fn module_rows_delete(
        &mut self,
        table: &crate::domain::ident::ModuleTable,
        tenant: super::domain::TenantId,
        expected: u64,
    ) -> StoreResult<()>;

    /// Module lifecycle: move a tenant module's status in the step's transaction.
    async fn tenant_module_move(
        &mut self,
        change: &super::domain::StatusChange<'_>,
    ) -> StoreResult<super::domain::TenantModuleRecord>;

    /// A database effect for tests and the demo: append a ledger row.
    async fn ledger_append(&mut self, job_id: JobId, worker: &str, entry: &str) -> StoreResult<()>;

    /// The step succeeded with `output`; queue each of `next` whose needs are all completed
    /// (and which is still pending), and complete the run once every step is completed.
    async fn step_completed(
        &mut self,
        run_id: RunId,
        idx: i32,
        output: &Value,
        next: Vec<NextStep>,
    ) -> StoreResult<()>;

    /// The step ran and its effects commit, but its outcome is a failure (an upgrade that
    /// rolled itself back): the step is dead with `error` and `output`; the run's other live
    /// steps stop and, with a completed step to undo, the run compensates, else it is
    /// `failed` with the error.
    async fn step_failed(
        &mut self,
        run_id: RunId,
        idx: i32,
        output: &Value,
        error: &str,
        compensations: Compensations,
    ) -> StoreResult<()>;

    /// Spawn child jobs of a step (fan-out); the step then waits for all of them to end
    /// instead of completing (see [`StepTx::step_completed`]).
    async fn spawn_children(
        &mut self,
        run_id: RunId,
        idx: i32,
        jobs: &[NewJob],
    ) -> StoreResult<usize>;

    /// How many children this transaction spawned.
    fn spawned(&self) -> usize;

    /// The step spawned children: record its output and let it wait for them.
    async fn step_waiting(&mut self, run_id: RunId, idx: i32, output: &Value) -> StoreResult<()>;

    /// The step's compensation succeeded; queue the next compensation (the first of
    /// `compensations` whose step is completed), or end the run.
    async fn step_compensated(
        &mut self,
        run_id: RunId,
        idx: i32,
        compensations: Compensations,
    ) -> StoreResult<()>;

    /// Acknowledge the step's job and commit everything; if the lease was lost meanwhile,
    /// roll everything back and return [`super::StoreError::Conflict`].
    async fn commit(self: Box<Self>) -> StoreResult<()>;
}
