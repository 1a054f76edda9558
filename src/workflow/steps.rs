//! Step handlers built into the binary, for the demo and the tests: `ledger.append` writes a
//! ledger row in the step's transaction (its effect commits with the step; a `step_ms` run
//! parameter makes it work that long after the write), `ledger.undo`
//! records a compensation, `step.fail` fails for good (no retries), `step.noop` passes its input on.
//! Handlers whose effects live in the database write them through `ctx.tx()`.

use super::engine::{StepContext, StepFuture, StepRegistry};
use crate::queue::JobError;
use serde_json::json;

fn ledger_append(mut ctx: StepContext<'_>) -> StepFuture<'_> {
    Box::pin(async move {
        let entry = format!("run {} step {}", ctx.run_id, ctx.step);
        let (job_id, worker) = (ctx.job.id, ctx.worker);
        ctx.tx()
            .await?
            .ledger_append(job_id, worker, &entry)
            .await?;
        // Work after the write, before the commit: a crash here must leave no trace.
        if let Some(ms) = ctx.params.get("step_ms").and_then(|v| v.as_u64()) {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        Ok(json!({"wrote": entry}))
    })
}

fn ledger_undo(mut ctx: StepContext<'_>) -> StepFuture<'_> {
    Box::pin(async move {
        let entry = format!("run {} undo {}", ctx.run_id, ctx.step);
        let (job_id, worker) = (ctx.job.id, ctx.worker);
        ctx.tx()
            .await?
            .ledger_append(job_id, worker, &entry)
            .await?;
        Ok(json!({}))
    })
}

/// Fails for good at once (no retry could make it pass), so its run compensates now.
fn fail(ctx: StepContext<'_>) -> StepFuture<'_> {
    Box::pin(async move {
        Err(JobError::Fatal(format!(
            "step {} of run {} failed on purpose",
            ctx.step, ctx.run_id
        )))
    })
}

fn noop(ctx: StepContext<'_>) -> StepFuture<'_> {
    Box::pin(async move { Ok(ctx.input.clone()) })
}

/// Register the built-in step handlers (the module lifecycle adds its own: see
/// [`crate::lifecycle::step_registry`]).
pub fn register(steps: &mut StepRegistry) {
    steps.register("ledger.append", ledger_append);
    steps.register("ledger.undo", ledger_undo);
    steps.register("step.fail", fail);
    steps.register("step.noop", noop);
    steps.register(super::definition::WAIT_SIGNAL, super::wait::signal);
    steps.register(super::definition::WAIT_UNTIL, super::wait::until);
}

/// A registry holding the built-ins.
pub fn registry() -> StepRegistry {
    let mut steps = StepRegistry::new();
    register(&mut steps);
    steps
}
