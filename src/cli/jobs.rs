//! `steward enqueue`, `steward jobs …` and `steward dlq …`.

use super::{CliError, load_kinds, open_store};
use crate::config::Settings;
use crate::queue::builtin;
use crate::store::SharedStore;
use crate::types::{JobFilter, JobId, JobRecord, JobState};
use crate::{Client, EnqueueOptions};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use std::str::FromStr;

#[derive(Debug, Args)]
pub(crate) struct EnqueueArgs {
    /// Job kind (declared in jobs/).
    kind: String,
    /// JSON object handed to the handler.
    #[arg(long, default_value = "{}")]
    payload: String,
    /// Tenant (fairness key, and `{tenant}` in unique templates).
    #[arg(long)]
    tenant: Option<String>,
    /// Priority (lower runs first); default from the kind.
    #[arg(long)]
    priority: Option<i16>,
    /// Run no earlier than this RFC 3339 time.
    #[arg(long, conflicts_with = "delay_ms")]
    run_at: Option<String>,
    /// Run no earlier than this many milliseconds from now.
    #[arg(long)]
    delay_ms: Option<u64>,
    /// Unique key (overrides the kind's template).
    #[arg(long)]
    unique_key: Option<String>,
    /// Enqueue this many copies (in batches).
    #[arg(long, default_value_t = 1)]
    count: usize,
}

#[derive(Debug, Args, Default)]
pub(crate) struct FilterArgs {
    /// scheduled, available, running, completed, retryable, dead or cancelled.
    #[arg(long)]
    state: Option<String>,
    /// Only jobs of this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Only jobs of this kind.
    #[arg(long)]
    kind: Option<String>,
    /// Only jobs of this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// Only jobs with a greater id (paging).
    #[arg(long)]
    after: Option<JobId>,
    /// At most this many (default 100, at most 10,000).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    limit: Option<i64>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum JobsCommand {
    /// List jobs.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a job with every attempt.
    Show {
        /// The job's id.
        id: JobId,
    },
    /// Make dead, cancelled, retryable or scheduled jobs available now.
    Retry {
        /// Job ids.
        #[arg(required = true)]
        ids: Vec<JobId>,
    },
    /// Drop dead jobs from the dead-letter queue.
    Discard {
        /// Job ids.
        #[arg(required = true)]
        ids: Vec<JobId>,
    },
    /// Cancel queued or running jobs.
    Cancel {
        /// Job ids.
        #[arg(required = true)]
        ids: Vec<JobId>,
    },
    /// Job counts per queue and state.
    Counts,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// List dead jobs.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Retry dead jobs: the ids given, or `--all` matching the filters.
    Retry(BulkArgs),
    /// Discard dead jobs: the ids given, or `--all` matching the filters.
    Discard(BulkArgs),
}

#[derive(Debug, Args)]
pub(crate) struct BulkArgs {
    /// Job ids.
    ids: Vec<JobId>,
    /// Every dead job matching --queue/--kind/--tenant.
    #[arg(long)]
    all: bool,
    /// Only jobs of this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Only jobs of this kind.
    #[arg(long)]
    kind: Option<String>,
    /// Only jobs of this tenant.
    #[arg(long)]
    tenant: Option<String>,
}

impl FilterArgs {
    fn to_filter(&self) -> Result<JobFilter, CliError> {
        let state = match &self.state {
            Some(state) => {
                Some(JobState::from_str(state).map_err(|e| CliError::Usage(e.to_string()))?)
            }
            None => None,
        };
        Ok(JobFilter {
            ids: Vec::new(),
            state,
            queue: self.queue.clone(),
            kind: self.kind.clone(),
            tenant: self.tenant.clone(),
            after_id: self.after,
            limit: self.limit,
        })
    }
}

impl BulkArgs {
    fn to_filter(&self) -> Result<JobFilter, CliError> {
        if self.all != self.ids.is_empty() {
            return Err(CliError::Usage(
                "give job ids or --all, not both and not neither".into(),
            ));
        }
        Ok(JobFilter {
            ids: self.ids.clone(),
            state: Some(JobState::Dead),
            queue: self.queue.clone(),
            kind: self.kind.clone(),
            tenant: self.tenant.clone(),
            after_id: None,
            limit: None,
        })
    }
}

pub(crate) async fn enqueue(settings: &Settings, args: &EnqueueArgs) -> Result<(), CliError> {
    let kinds = load_kinds(settings)?;
    let payload: serde_json::Value = serde_json::from_str(&args.payload)
        .map_err(|e| CliError::Usage(format!("--payload is not valid JSON: {e}")))?;
    let run_at = match (&args.run_at, args.delay_ms) {
        (Some(at), _) => Some(
            DateTime::parse_from_rfc3339(at)
                .map_err(|e| {
                    CliError::Usage(format!("--run-at `{at}` is not an RFC 3339 time: {e}"))
                })?
                .with_timezone(&Utc),
        ),
        (None, Some(ms)) => Some(Utc::now() + chrono::Duration::milliseconds(ms as i64)),
        (None, None) => None,
    };
    let options = EnqueueOptions {
        tenant: args.tenant.clone(),
        priority: args.priority,
        run_at,
        unique_key: args.unique_key.clone(),
        ..EnqueueOptions::default()
    };
    // Validate before touching the database, so bad input fails the same way everywhere.
    let store = open_store(settings).await?;
    let client = Client::new(store, kinds).with_registry(builtin::registry());
    let job = client.build(&args.kind, payload, options)?;
    let jobs = vec![job; args.count.max(1)];
    for chunk in jobs.chunks(1000) {
        for enqueued in client.enqueue_many(chunk).await? {
            if args.count <= 10 {
                let note = if enqueued.inserted {
                    "enqueued"
                } else {
                    "duplicate of live job"
                };
                out!("{note} {}", enqueued.id);
            }
        }
    }
    if args.count > 10 {
        out!("enqueued {} jobs of kind {}", args.count, args.kind);
    }
    Ok(())
}

pub(crate) async fn jobs(settings: &Settings, command: JobsCommand) -> Result<(), CliError> {
    let store = open_store(settings).await?;
    match command {
        JobsCommand::List { filter, json } => print_jobs(&store, &filter.to_filter()?, json).await,
        JobsCommand::Show { id } => {
            let job = store
                .job_get(id)
                .await?
                .ok_or_else(|| CliError::Failed(format!("no job {id}")))?;
            out!(
                "{}",
                serde_json::to_string_pretty(&job).map_err(|e| CliError::Failed(e.to_string()))?
            );
            Ok(())
        }
        JobsCommand::Retry { ids } => retry(settings, store, &by_ids(ids)).await,
        JobsCommand::Discard { ids } => {
            report("discarded", store.jobs_discard(&by_ids(ids)).await?.count)
        }
        JobsCommand::Cancel { ids } => {
            report("cancelled", store.jobs_cancel(&by_ids(ids)).await?.count)
        }
        JobsCommand::Counts => {
            for count in store.jobs_count_by_state().await? {
                out!("{:<20} {:<10} {}", count.queue, count.state, count.count);
            }
            Ok(())
        }
    }
}

pub(crate) async fn dlq(settings: &Settings, command: DlqCommand) -> Result<(), CliError> {
    let store = open_store(settings).await?;
    match command {
        DlqCommand::List { filter, json } => {
            let mut filter = filter.to_filter()?;
            filter.state = Some(JobState::Dead);
            print_jobs(&store, &filter, json).await
        }
        DlqCommand::Retry(args) => retry(settings, store, &args.to_filter()?).await,
        DlqCommand::Discard(args) => report(
            "discarded",
            store.jobs_discard(&args.to_filter()?).await?.count,
        ),
    }
}

fn by_ids(ids: Vec<JobId>) -> JobFilter {
    JobFilter {
        ids,
        ..JobFilter::default()
    }
}

/// Retry through the operations: a workflow step's dead job resumes its run.
async fn retry(
    settings: &Settings,
    store: SharedStore,
    filter: &JobFilter,
) -> Result<(), CliError> {
    let kinds = super::load_kinds(settings)?;
    let engine = super::load_engine(settings, store, &kinds)?;
    let operator = crate::lifecycle::operator::Operator::new(engine);
    let retried = operator
        .retry_jobs(filter, &super::operator_actor())
        .await?;
    for run in &retried.runs {
        out!("run {run} retried from its failed step (its dead step job left the DLQ)");
    }
    for refused in &retried.refused {
        eprintln!("not retried: {refused}");
    }
    out!("retried {} job(s)", retried.jobs);
    Ok(())
}

/// An action that applied to nothing is a failure (exit non-zero), never a success.
fn report(what: &str, count: u64) -> Result<(), CliError> {
    if count == 0 {
        return Err(CliError::Failed(format!(
            "no job was {what}: none matched in a state that allows it"
        )));
    }
    out!("{what} {count} job(s)");
    Ok(())
}

async fn print_jobs(store: &SharedStore, filter: &JobFilter, json: bool) -> Result<(), CliError> {
    let jobs = store.jobs_list(filter).await?;
    if json {
        for job in &jobs {
            out!(
                "{}",
                serde_json::to_string(job).map_err(|e| CliError::Failed(e.to_string()))?
            );
        }
        return Ok(());
    }
    out!(
        "{:>8}  {:<10}  {:<12}  {:<12}  {:<12}  {:>7}  last error",
        "id",
        "state",
        "queue",
        "kind",
        "tenant",
        "attempt"
    );
    for job in &jobs {
        out!(
            "{:>8}  {:<10}  {:<12}  {:<12}  {:<12}  {:>3}/{:<3}  {}",
            job.id,
            job.state,
            job.queue,
            job.kind,
            job.tenant,
            job.attempt,
            job.max_attempts,
            last_error(job)
        );
    }
    Ok(())
}

fn last_error(job: &JobRecord) -> String {
    job.attempts
        .iter()
        .rev()
        .find_map(|a| a.error.clone())
        .unwrap_or_default()
}
