//! The operators' actions on runs and jobs, with the lifecycle's rules applied: the one way
//! the CLI, the API and the dashboard retry or cancel a run and retry dead jobs.
//!
//! - A failed `module_provision` run is not retried: its module is in ERROR, and an ERROR
//!   module is requested again (the availability rules run again). Other workflows that
//!   only an operation starts are retried by a Master Admin only.
//! - Cancelling a run compensates its completed steps (see [`Engine::cancel`]); a cancelled
//!   provisioning leaves its module in ERROR, "cancelled by <who>". A run that only an
//!   operation starts is cancelled by a Master Admin, except the tenant's own operations
//!   (its module's provisioning, its archive): a tenant cannot stop its nightly purge.
//! - A live job that is a workflow step is cancelled **through its run**, under the same
//!   rules (cancelling the job alone would fail the run, uncompensated by any rule).
//! - A dead (or cancelled) job that is a workflow step is retried **through its run**: the
//!   run resumes from its failed step, under the same rules as a run retry, and the dead job
//!   leaves the dead-letter queue. A retry that applies to nothing is an error, never a
//!   success.

use super::request::{pending_request_withdrawn, provisioning_ended, provisioning_key};
use super::{ARCHIVE_WORKFLOW, LifecycleError, PROVISION_WORKFLOW};
use crate::domain::DomainError;
use crate::domain::actor::{Actor, Authority};
use crate::store::runs::{RunId, RunRecord};
use crate::types::{JobFilter, JobId, JobState};
use crate::workflow::Engine;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a retry of jobs did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Retried {
    /// Jobs made available again (not workflow steps).
    pub jobs: u64,
    /// Runs resumed from their failed step, for the dead step jobs among those asked for.
    pub runs: Vec<RunId>,
    /// Step jobs whose run could not be retried, and why.
    pub refused: Vec<String>,
}

impl Retried {
    /// How many things were retried.
    pub fn count(&self) -> u64 {
        self.jobs + self.runs.len() as u64
    }
}

/// What an operator does to a run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Act {
    Retry,
    Cancel,
}

/// Run and job actions over the engine (no lifecycle workflows needed).
#[derive(Clone)]
pub struct Operator {
    engine: Arc<Engine>,
}

impl Operator {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }

    /// Start a run with raw parameters (the API's `POST /api/runs`, `steward run`): refused
    /// for a workflow that only its operation starts (provisioning, upgrade, archive, purge,
    /// deprecation: their parameters are the operation's decisions, not a caller's).
    pub async fn start_run(
        &self,
        workflow: &str,
        params: serde_json::Value,
        idempotency_key: Option<String>,
        actor: &Actor,
    ) -> Result<(RunId, bool), LifecycleError> {
        let def = self.engine.workflows().get(workflow);
        if let Some(operation) = def.and_then(|def| def.operation.as_deref()) {
            return Err(DomainError::NotPermitted {
                what: format!("starting `{workflow}` with parameters"),
                reason: format!("it is started only by the {operation} operation"),
            }
            .into());
        }
        if let Some(def) = def
            && !def.started_by.iter().any(|r| r == actor.authority.role())
        {
            return Err(DomainError::NotPermitted {
                what: format!("starting `{workflow}`"),
                reason: if def.started_by.is_empty() {
                    "its definition names no role that may start it (started_by)".into()
                } else {
                    format!(
                        "only {} may start it, not a {}",
                        def.started_by.join(" or "),
                        actor.authority.role()
                    )
                },
            }
            .into());
        }
        // A caller's keys live apart from the ones steward gives its own runs (cron ticks,
        // purges, deprecations), so no caller can take over one of those.
        let idempotency_key = idempotency_key.map(|key| format!("api:{key}"));
        Ok(self.engine.start(workflow, params, idempotency_key).await?)
    }

    /// Retry a failed run from its failed step, if the rules allow it for `actor`.
    pub async fn retry_run(&self, id: RunId, actor: &Actor) -> Result<(), LifecycleError> {
        let run = self.engine.run(id).await?;
        if run.workflow == PROVISION_WORKFLOW {
            return Err(DomainError::NotPermitted {
                what: format!("retrying provisioning run {id}"),
                reason: "a failed provisioning leaves its module in ERROR: request the module \
                         again (the availability rules and approval apply anew)"
                    .into(),
            }
            .into());
        }
        self.check_operation_run(&run, Act::Retry, actor)?;
        Ok(self.engine.retry(id).await?)
    }

    /// A run only an operation starts is retried or cancelled by a Master Admin; a tenant
    /// cancels its own operations' runs (its module's provisioning, its archive) too.
    fn check_operation_run(
        &self,
        run: &RunRecord,
        act: Act,
        actor: &Actor,
    ) -> Result<(), LifecycleError> {
        let Some(def) = self.engine.workflows().get(&run.workflow) else {
            return Ok(());
        };
        let Some(operation) = &def.operation else {
            return Ok(());
        };
        let tenants_own = [PROVISION_WORKFLOW, ARCHIVE_WORKFLOW].contains(&run.workflow.as_str());
        if actor.authority == Authority::MasterAdmin || (act == Act::Cancel && tenants_own) {
            return Ok(());
        }
        let (verb, verbs) = match act {
            Act::Retry => ("retrying", "retries"),
            Act::Cancel => ("cancelling", "cancels"),
        };
        Err(DomainError::NotPermitted {
            what: format!("{verb} run {} of `{}`", run.id, run.workflow),
            reason: format!(
                "it is started by the {operation} operation; a Master Admin {verbs} it"
            ),
        }
        .into())
    }

    /// Cancel a run: its completed steps are compensated, then it is `cancelled`. A cancelled
    /// provisioning leaves its module in ERROR ("cancelled by <who>"), or, while it waited for
    /// approval, withdraws the request (DISABLED before approval: requested again).
    pub async fn cancel_run(&self, id: RunId, actor: &Actor) -> Result<(), LifecycleError> {
        let run = self.engine.run(id).await?;
        self.check_operation_run(&run, Act::Cancel, actor)?;
        self.engine.cancel(id, actor.as_str()).await?;
        if run.workflow == PROVISION_WORKFLOW {
            let tenant = run.params["tenant_id"].as_i64().or_else(|| {
                run.params["tenant_id"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
            });
            if let (Some(tenant), Some(module)) = (tenant, run.params["module"].as_str()) {
                let reason = format!("provisioning run {id} cancelled by {}", actor.as_str());
                let store = self.engine.store();
                // Only the request this run served: one made again since has a run of its own.
                let served = store
                    .tenant_module_get(tenant, module)
                    .await?
                    .filter(|current| Engine::started_with_key(&run, &provisioning_key(current)));
                if let Some(current) = served {
                    let read = Some(current.updated_at);
                    provisioning_ended(store, tenant, module, &reason, actor, read).await?;
                    pending_request_withdrawn(store, tenant, module, &reason, actor, read).await?;
                }
            }
        }
        Ok(())
    }

    /// Cancel the live jobs `ids`: a workflow step's job through its run
    /// ([`Operator::cancel_run`]), every other job directly. Returns how many jobs and runs
    /// were cancelled; a job or run refused stops the call with its reason.
    pub async fn cancel_jobs(&self, ids: &[JobId], actor: &Actor) -> Result<u64, LifecycleError> {
        let store = self.engine.store();
        let mut plain = Vec::new();
        let mut runs = std::collections::BTreeSet::new();
        for &id in ids {
            let Some(job) = store.job_get(id).await? else {
                continue;
            };
            let live = matches!(
                job.state,
                JobState::Scheduled | JobState::Available | JobState::Running | JobState::Retryable
            );
            match self.engine.run_of_job(&job.kind, &job.payload) {
                Some(run) if live => {
                    runs.insert(run);
                }
                _ => plain.push(id),
            }
        }
        let mut cancelled = 0;
        for run in runs {
            self.cancel_run(run, actor).await?;
            cancelled += 1;
        }
        if !plain.is_empty() {
            cancelled += store
                .jobs_cancel(&JobFilter {
                    ids: plain,
                    ..Default::default()
                })
                .await?
                .count;
        }
        Ok(cancelled)
    }

    /// Retry the jobs `filter` matches: workflow-step jobs that are dead or cancelled through
    /// their runs (see the module's documentation), every other job directly. Nothing
    /// retried is [`LifecycleError::NothingDone`].
    pub async fn retry_jobs(
        &self,
        filter: &JobFilter,
        actor: &Actor,
    ) -> Result<Retried, LifecycleError> {
        let store = self.engine.store();
        let mut plain: Vec<JobId> = Vec::new();
        // Run → the dead step jobs of it that were asked for.
        let mut runs: BTreeMap<RunId, Vec<JobId>> = BTreeMap::new();
        // Jobs asked for by id that are missing, or in a state a retry does not apply to.
        let mut refused: Vec<String> = Vec::new();
        let mut seen: std::collections::HashSet<JobId> = std::collections::HashSet::new();
        let mut page = JobFilter {
            limit: Some(1000),
            ..filter.clone()
        };
        loop {
            let jobs = store.jobs_list(&page).await?;
            let Some(last) = jobs.last() else { break };
            page.after_id = Some(last.id);
            let full = jobs.len() as i64 >= 1000;
            for job in jobs {
                seen.insert(job.id);
                if !filter.ids.is_empty()
                    && matches!(
                        job.state,
                        JobState::Available | JobState::Running | JobState::Completed
                    )
                {
                    refused.push(format!("job {} is {}: nothing to retry", job.id, job.state));
                    continue;
                }
                let through_run = matches!(job.state, JobState::Dead | JobState::Cancelled);
                match self.engine.run_of_job(&job.kind, &job.payload) {
                    Some(run) if through_run => runs.entry(run).or_default().push(job.id),
                    _ => plain.push(job.id),
                }
            }
            if !full || !filter.ids.is_empty() {
                break;
            }
        }
        for id in &filter.ids {
            if !seen.contains(id) {
                refused.push(format!("no job {id}"));
            }
        }
        let mut retried = Retried {
            refused,
            ..Retried::default()
        };
        if !plain.is_empty() {
            retried.jobs = store
                .jobs_retry(&JobFilter {
                    ids: plain,
                    ..Default::default()
                })
                .await?
                .count;
        }
        for (run, jobs) in runs {
            // The retry queues a new job for the step, and the dead one leaves the DLQ.
            match self.retry_run(run, actor).await {
                Ok(()) => retried.runs.push(run),
                Err(err) => retried
                    .refused
                    .push(format!("jobs {jobs:?} belong to run {run}: {err}")),
            }
        }
        if retried.count() == 0 {
            let why = if retried.refused.is_empty() {
                "no job matched that can be retried".to_string()
            } else {
                retried.refused.join("; ")
            };
            return Err(LifecycleError::NothingDone(format!(
                "nothing was retried: {why}"
            )));
        }
        Ok(retried)
    }
}
