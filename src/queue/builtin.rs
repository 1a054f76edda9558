//! Handlers built into the binary: a no-op, a sleep, a ledger probe (crash tests, demo) and a
//! failing job (to see the dead-letter queue work). Their kinds are declared in `jobs/`.

use super::registry::{JobContext, JobError, Registry};
use serde::Deserialize;
use std::time::Duration;

/// Arguments of `noop`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoopArgs {}

/// Arguments of `sleep`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepArgs {
    /// How long to sleep.
    pub ms: u64,
}

/// Arguments of `ledger`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerArgs {
    /// Work time after writing the ledger row (a kill in it makes a duplicate on retry).
    #[serde(default)]
    pub ms: u64,
}

/// Arguments of `fail`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailArgs {
    #[serde(default = "default_message")]
    pub message: String,
    /// Dead-letter at once instead of retrying.
    #[serde(default)]
    pub fatal: bool,
    /// Succeed from this attempt on (to show a retry from the dead-letter queue working).
    pub succeed_on_attempt: Option<i32>,
}

fn default_message() -> String {
    "this job always fails".into()
}

/// Register every built-in handler.
pub fn register(registry: &mut Registry) {
    registry.register("noop", |_: NoopArgs, _: JobContext| async { Ok(()) });
    registry.register("sleep", |args: SleepArgs, _: JobContext| async move {
        tokio::time::sleep(Duration::from_millis(args.ms)).await;
        Ok(())
    });
    registry.register("ledger", |args: LedgerArgs, ctx: JobContext| async move {
        let started_at = chrono::Utc::now();
        ctx.store
            .ledger_append(ctx.job.id, &ctx.worker, started_at)
            .await?;
        if args.ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.ms)).await;
        }
        Ok(())
    });
    registry.register("fail", |args: FailArgs, ctx: JobContext| async move {
        match args.succeed_on_attempt {
            Some(n) if ctx.job.attempt >= n => Ok(()),
            _ if args.fatal => Err(JobError::Fatal(args.message)),
            _ => Err(JobError::Retryable(args.message)),
        }
    });
}

/// A registry holding the built-ins.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    register(&mut registry);
    registry
}
