//! `steward cost …` and `steward purge`: monthly cost aggregation and purge-and-export on
//! demand (both also run nightly from their cron workflows).

use super::{CliError, load_engine, load_kinds, open_store, output};
use crate::config::Settings;
use crate::store::data::parse_month;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub(crate) enum CostCommand {
    /// Recompute one month of `tenant_module_monthly_cost` from the usage logs (idempotent).
    Aggregate {
        /// The month, `YYYY-MM`.
        #[arg(long)]
        month: String,
    },
    /// The monthly cost rows (of one month, or all).
    Show {
        /// The month, `YYYY-MM`.
        #[arg(long)]
        month: Option<String>,
    },
}

fn month(text: &str) -> Result<chrono::NaiveDate, CliError> {
    parse_month(text).ok_or_else(|| CliError::Usage(format!("month `{text}` is not YYYY-MM")))
}

pub(crate) async fn cost(settings: &Settings, command: CostCommand) -> Result<(), CliError> {
    match command {
        CostCommand::Aggregate { month: text } => {
            let month = month(&text)?;
            let store = open_store(settings).await?;
            let done = store.cost_aggregate(month).await?;
            output::done(
                settings.output,
                format!(
                    "{text}: {} usage rows → {} tenant module rows",
                    done.usage_rows, done.cost_rows
                ),
                serde_json::json!({"month": text, "usage_rows": done.usage_rows, "cost_rows": done.cost_rows}),
            );
            Ok(())
        }
        CostCommand::Show { month: text } => {
            let month = text.as_deref().map(month).transpose()?;
            let store = open_store(settings).await?;
            let rows = store
                .monthly_costs(&crate::store::data::CostFilter::month(month))
                .await?;
            output::record(settings.output, &rows)
        }
    }
}

/// Start the nightly purge-and-export now (a worker runs it).
pub(crate) async fn purge(settings: &Settings) -> Result<(), CliError> {
    let kinds = load_kinds(settings)?;
    let store = open_store(settings).await?;
    let engine = load_engine(settings, store, &kinds)?;
    let (run, _) = engine
        .start("data_retention", serde_json::json!({}), None)
        .await?;
    output::done(
        settings.output,
        format!(
            "data retention run {run} started: each tenant module with expired rows gets a purge run"
        ),
        serde_json::json!({"run": run}),
    );
    Ok(())
}
