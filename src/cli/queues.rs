//! `steward queues` and `steward workers`: what each queue holds, pause and resume, the worker
//! processes.

use super::{CliError, open_store, output};
use crate::config::{OutputFormat, Settings};
use crate::queue::control::{self, ControlReport};
use crate::queue::summary;
use crate::types::JobState;
use clap::Subcommand;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub(crate) enum QueuesCommand {
    /// Every queue: jobs per state, latency, paused or not, workers and concurrency.
    List,
    /// Pause a queue on every node: returns once every live worker has applied it (no job of
    /// it starts from then on; jobs already fetched go back without using an attempt).
    Pause(ControlArgs),
    /// Resume a paused queue.
    Resume(ControlArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct ControlArgs {
    /// The queue.
    queue: String,
    /// Seconds to wait for every live worker to apply it (0 to 60).
    #[arg(long, default_value_t = control::DEFAULT_WAIT.as_secs(), value_parser = clap::value_parser!(u64).range(0..=60))]
    wait: u64,
}

pub(crate) async fn queues(settings: &Settings, command: QueuesCommand) -> Result<(), CliError> {
    let store = open_store(settings).await?;
    match command {
        QueuesCommand::List => {
            let queues = summary::summaries(&store).await?;
            output::listing(
                settings.output,
                &[
                    "queue",
                    "state",
                    "available",
                    "running",
                    "scheduled",
                    "retryable",
                    "dead",
                    "completed",
                    "oldest",
                    "workers",
                    "concurrency",
                ],
                &queues,
                |q| {
                    vec![
                        q.queue.clone(),
                        if q.paused { "paused" } else { "running" }.into(),
                        q.count(JobState::Available).to_string(),
                        q.count(JobState::Running).to_string(),
                        q.count(JobState::Scheduled).to_string(),
                        q.count(JobState::Retryable).to_string(),
                        q.count(JobState::Dead).to_string(),
                        q.count(JobState::Completed).to_string(),
                        format!("{:.1}s", q.oldest_available_ms as f64 / 1000.0),
                        q.live_workers.to_string(),
                        q.concurrency.to_string(),
                    ]
                },
            )
        }
        QueuesCommand::Pause(args) => set(settings, &store, &args, true).await,
        QueuesCommand::Resume(args) => set(settings, &store, &args, false).await,
    }
}

async fn set(
    settings: &Settings,
    store: &crate::store::SharedStore,
    args: &ControlArgs,
    paused: bool,
) -> Result<(), CliError> {
    let by = super::operator_actor().name;
    let wait = Duration::from_secs(args.wait);
    let report = control::set_paused(store, &args.queue, paused, &by, wait).await?;
    print(settings.output, &report)
}

/// A pause or resume that did nothing, or that not every worker applied, is an error.
fn print(format: OutputFormat, report: &ControlReport) -> Result<(), CliError> {
    let verb = if report.paused { "paused" } else { "resumed" };
    if !report.changed {
        return Err(CliError::Failed(format!(
            "queue `{}` was already {}: nothing changed",
            report.queue,
            if report.paused { "paused" } else { "running" }
        )));
    }
    if !report.acknowledged() {
        return Err(CliError::Failed(format!(
            "queue `{}` is {verb} in the database, but these workers have not applied it yet: {} \
             (they apply it within their poll interval; `steward workers` shows them)",
            report.queue,
            report.pending.join(", ")
        )));
    }
    output::done(
        format,
        format!(
            "{verb} queue `{}` (applied by {} live worker(s))",
            report.queue,
            report.applied_by.len()
        ),
        serde_json::to_value(report).unwrap_or_default(),
    );
    Ok(())
}

/// `steward workers`: the registered worker processes.
pub(crate) async fn workers(settings: &Settings) -> Result<(), CliError> {
    let store = open_store(settings).await?;
    let workers = store.workers_list().await?;
    output::listing(
        settings.output,
        &[
            "worker",
            "host",
            "pid",
            "alive",
            "queues",
            "jobs in hand",
            "last beat",
            "started",
        ],
        &workers,
        |w| {
            vec![
                w.id.clone(),
                w.host.clone(),
                w.pid.to_string(),
                if w.alive { "yes" } else { "no" }.into(),
                w.queues
                    .iter()
                    .map(|q| format!("{}={}", q.name, q.concurrency))
                    .collect::<Vec<_>>()
                    .join(","),
                w.running.to_string(),
                w.heartbeat_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                w.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            ]
        },
    )
}
