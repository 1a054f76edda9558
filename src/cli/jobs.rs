//! `steward enqueue`, `steward jobs …` and `steward dlq …`.

use super::{CliError, load_kinds, open_store, output};
use crate::config::{OutputFormat, Settings};
use crate::store::SharedStore;
use crate::types::{JobFilter, JobId, JobRecord, JobState};
use crate::{Client, EnqueueOptions};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde_json::json;
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
    /// Only jobs whose payload or errors contain this text (case-insensitive; bound it with
    /// --since on a large table).
    #[arg(long)]
    text: Option<String>,
    /// Only jobs created in the last this many hours (1 to 8,760).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..=8760))]
    since_hours: Option<i64>,
    /// Newest first.
    #[arg(long)]
    newest: bool,
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
            text: self.text.clone(),
            since: self
                .since_hours
                .map(|h| chrono::Utc::now() - chrono::Duration::hours(h)),
            newest_first: self.newest,
            limit: self.limit,
            ..JobFilter::default()
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
            ..JobFilter::default()
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
    let client = Client::new(store, kinds).with_registry(super::job_registry());
    let job = client.build(&args.kind, payload, options)?;
    let jobs = vec![job; args.count.max(1)];
    let mut results = Vec::new();
    for chunk in jobs.chunks(1000) {
        results.extend(client.enqueue_many(chunk).await?);
    }
    if args.count > 10 {
        let inserted = results.iter().filter(|e| e.inserted).count();
        output::done(
            settings.output,
            format!("enqueued {inserted} jobs of kind {}", args.kind),
            json!({"kind": args.kind, "enqueued": inserted, "duplicates": results.len() - inserted}),
        );
        return Ok(());
    }
    output::listing(settings.output, &["job", "enqueued"], &results, |e| {
        let note = if e.inserted {
            "enqueued"
        } else {
            "duplicate of a live job"
        };
        vec![e.id.to_string(), note.to_string()]
    })
}

pub(crate) async fn jobs(settings: &Settings, command: JobsCommand) -> Result<(), CliError> {
    let store = open_store(settings).await?;
    match command {
        JobsCommand::List { filter } => {
            print_jobs(&store, &filter.to_filter()?, settings.output).await
        }
        JobsCommand::Show { id } => {
            let job = store
                .job_get(id)
                .await?
                .ok_or_else(|| CliError::Failed(format!("no job {id}")))?;
            output::record(settings.output, &job)
        }
        JobsCommand::Retry { ids } => retry(settings, store, &by_ids(ids)).await,
        JobsCommand::Discard { ids } => report(
            settings,
            "discarded",
            store.jobs_discard(&by_ids(ids)).await?.count,
        ),
        JobsCommand::Cancel { ids } => {
            // A workflow step's job is cancelled through its run.
            let kinds = super::load_kinds(settings)?;
            let engine = super::load_engine(settings, store, &kinds)?;
            let operator = crate::lifecycle::operator::Operator::new(engine);
            let count = operator.cancel_jobs(&ids, &super::operator_actor()).await?;
            report(settings, "cancelled", count)
        }
        JobsCommand::Counts => output::listing(
            settings.output,
            &["queue", "state", "count"],
            &store.jobs_count_by_state().await?,
            |c| vec![c.queue.clone(), c.state.to_string(), c.count.to_string()],
        ),
    }
}

pub(crate) async fn dlq(settings: &Settings, command: DlqCommand) -> Result<(), CliError> {
    let store = open_store(settings).await?;
    match command {
        DlqCommand::List { filter } => {
            let mut filter = filter.to_filter()?;
            filter.state = Some(JobState::Dead);
            print_jobs(&store, &filter, settings.output).await
        }
        DlqCommand::Retry(args) => retry(settings, store, &args.to_filter()?).await,
        DlqCommand::Discard(args) => report(
            settings,
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
    for refused in &retried.refused {
        eprintln!("not retried: {refused}");
    }
    let mut text = format!("retried {} job(s)", retried.jobs);
    for run in &retried.runs {
        text.push_str(&format!(
            "\nrun {run} retried from its failed step (its dead step job left the DLQ)"
        ));
    }
    output::done(
        settings.output,
        text,
        json!({"retried_jobs": retried.jobs, "retried_runs": retried.runs, "refused": retried.refused}),
    );
    Ok(())
}

/// An action that applied to nothing is a failure (exit non-zero), never a success.
fn report(settings: &Settings, what: &str, count: u64) -> Result<(), CliError> {
    if count == 0 {
        return Err(CliError::Failed(format!(
            "no job was {what}: none matched in a state that allows it"
        )));
    }
    output::done(
        settings.output,
        format!("{what} {count} job(s)"),
        json!({what: count}),
    );
    Ok(())
}

async fn print_jobs(
    store: &SharedStore,
    filter: &JobFilter,
    format: OutputFormat,
) -> Result<(), CliError> {
    let jobs = store.jobs_list(filter).await?;
    output::listing(
        format,
        &[
            "id",
            "state",
            "queue",
            "kind",
            "tenant",
            "attempt",
            "last error",
        ],
        &jobs,
        |job| {
            vec![
                job.id.to_string(),
                job.state.to_string(),
                job.queue.clone(),
                job.kind.clone(),
                job.tenant.clone(),
                format!("{}/{}", job.attempt, job.max_attempts),
                last_error(job),
            ]
        },
    )
}

fn last_error(job: &JobRecord) -> String {
    job.attempts
        .iter()
        .rev()
        .find_map(|a| a.error.clone())
        .unwrap_or_default()
}
