//! `steward run` and `steward runs …`: workflow runs from the command line.

use super::{CliError, load_engine, load_kinds, open_store, output};
use crate::config::Settings;
use crate::store::runs::{RunId, RunState};
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};
use std::str::FromStr;

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Workflow name (defined in workflows/).
    workflow: String,
    /// A parameter, `name=value` (the value is read as JSON when it parses, else as text).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// Starting again with the same key returns the existing run.
    #[arg(long)]
    idempotency_key: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RunsCommand {
    /// List runs, newest first.
    List {
        /// running, completed, compensating, failed or cancelled.
        #[arg(long)]
        state: Option<String>,
        /// At most this many (1 to 10,000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
    },
    /// Show a run with its steps.
    Show {
        /// The run's id.
        id: RunId,
    },
    /// Retry a failed run from its failed step.
    Retry {
        /// The run's id.
        id: RunId,
    },
    /// Cancel a run: its completed steps are compensated (latest first), then it is
    /// cancelled.
    Cancel {
        /// The run's id.
        id: RunId,
    },
    /// Send a run a signal its workflow declares for master admins (a step waiting for it
    /// resumes at once).
    Signal {
        /// The run's id.
        id: RunId,
        /// The signal's name.
        name: String,
        /// What the waiting step receives, as JSON.
        #[arg(long)]
        payload: Option<String>,
    },
}

fn operator(
    engine: &std::sync::Arc<crate::workflow::Engine>,
) -> crate::lifecycle::operator::Operator {
    crate::lifecycle::operator::Operator::new(std::sync::Arc::clone(engine))
}

fn parse_params(params: &[String]) -> Result<Value, CliError> {
    let mut map = Map::new();
    for param in params {
        let (name, value) = param
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--param `{param}` is not NAME=VALUE")))?;
        let value =
            serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
        map.insert(name.to_string(), value);
    }
    Ok(Value::Object(map))
}

pub(crate) async fn run(settings: &Settings, args: &RunArgs) -> Result<(), CliError> {
    let params = parse_params(&args.params)?;
    let kinds = load_kinds(settings)?;
    let store = open_store(settings).await?;
    let engine = load_engine(settings, store, &kinds)?;
    let (id, created) = crate::lifecycle::operator::Operator::new(engine)
        .start_run(
            &args.workflow,
            params,
            args.idempotency_key.clone(),
            &super::operator_actor(),
        )
        .await?;
    let text = if created {
        format!("started run {id}")
    } else {
        format!("run {id} already exists for this idempotency key")
    };
    output::done(
        settings.output,
        text,
        json!({"run": id, "started": created}),
    );
    Ok(())
}

pub(crate) async fn runs(settings: &Settings, command: RunsCommand) -> Result<(), CliError> {
    let kinds = load_kinds(settings)?;
    let store = open_store(settings).await?;
    let engine = load_engine(settings, store.clone(), &kinds)?;
    match command {
        RunsCommand::List { state, limit } => {
            let state = match state {
                Some(state) => Some(RunState::from_str(&state).map_err(CliError::Usage)?),
                None => None,
            };
            output::listing(
                settings.output,
                &["id", "workflow", "version", "state", "step", "error"],
                &store.runs_list(state, limit).await?,
                |run| {
                    vec![
                        run.id.to_string(),
                        run.workflow.clone(),
                        run.version.clone().unwrap_or_else(|| "-".into()),
                        run.state.to_string(),
                        run.current_step.to_string(),
                        run.error.clone().unwrap_or_default(),
                    ]
                },
            )?;
        }
        RunsCommand::Show { id } => {
            let run = engine.run(id).await?;
            output::record(settings.output, &run)?;
        }
        RunsCommand::Retry { id } => {
            operator(&engine)
                .retry_run(id, &super::operator_actor())
                .await?;
            output::done(
                settings.output,
                format!("run {id} retried from its failed step"),
                json!({"run": id, "retried": true}),
            );
        }
        RunsCommand::Cancel { id } => {
            operator(&engine)
                .cancel_run(id, &super::operator_actor())
                .await?;
            let run = engine.run(id).await?;
            let what = if run.state == RunState::Cancelled {
                "cancelled"
            } else {
                "cancelling: its completed steps are being compensated"
            };
            output::done(
                settings.output,
                format!("run {id} {what}"),
                json!({"run": id, "state": run.state}),
            );
        }
        RunsCommand::Signal { id, name, payload } => {
            let payload = match payload {
                Some(text) => serde_json::from_str(&text)
                    .map_err(|e| CliError::Usage(format!("--payload is not JSON: {e}")))?,
                None => serde_json::Value::Null,
            };
            let actor = super::operator_actor();
            engine
                .signal(
                    id,
                    &name,
                    &payload,
                    &actor.name,
                    Some(actor.authority.role()),
                )
                .await?;
            output::done(
                settings.output,
                format!("signal `{name}` sent to run {id}"),
                json!({"run": id, "signal": name}),
            );
        }
    }
    Ok(())
}

pub(crate) async fn schedules(settings: &Settings, count: usize) -> Result<(), CliError> {
    let kinds = load_kinds(settings)?;
    let store = open_store(settings).await?;
    let engine = load_engine(settings, store, &kinds)?;
    let fires =
        crate::workflow::schedule::next_fires(engine.workflows(), chrono::Utc::now(), count.max(1));
    if fires.is_empty() && settings.output == crate::config::OutputFormat::Table {
        out!("no workflow has a cron trigger");
        return Ok(());
    }
    output::listing(
        settings.output,
        &["workflow", "cron", "time zone", "next fire times (UTC)"],
        &fires,
        |fire| {
            let at: Vec<String> = fire.at.iter().map(|t| t.to_rfc3339()).collect();
            vec![
                fire.workflow.clone(),
                fire.cron.clone(),
                fire.timezone.clone(),
                at.join("  "),
            ]
        },
    )
}
