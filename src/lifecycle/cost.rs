//! Monthly cost aggregation (SPEC §4.2.4): `cost.aggregate` recomputes
//! `tenant_module_monthly_cost` from `module_usage_logs` for one month (parameter `month`,
//! `YYYY-MM`), or, run nightly by `workflows/cost_aggregation.toml` without one, for the
//! current month and the previous one (late logs land in it). A re-run over the same logs
//! writes the same rows (see [`DataStore::cost_aggregate`](crate::store::DataStore)).

use crate::queue::JobError;
use crate::store::data::parse_month;
use crate::workflow::{StepContext, StepFuture, StepRegistry};
use chrono::{Datelike, NaiveDate, Utc};
use serde_json::json;

/// The months a run covers: the one asked for, or this month and the last.
fn months(ctx: &StepContext<'_>) -> Result<Vec<NaiveDate>, JobError> {
    match ctx.params["month"].as_str().filter(|m| !m.is_empty()) {
        Some(text) => parse_month(text)
            .map(|m| vec![m])
            .ok_or_else(|| JobError::Fatal(format!("month `{text}` is not YYYY-MM"))),
        None => {
            let today = Utc::now().date_naive();
            let this = today.with_day(1).unwrap_or(today);
            let last = this
                .checked_sub_months(chrono::Months::new(1))
                .unwrap_or(this);
            Ok(vec![last, this])
        }
    }
}

fn aggregate(ctx: StepContext<'_>) -> StepFuture<'_> {
    Box::pin(async move {
        let mut done = Vec::new();
        for month in months(&ctx)? {
            let summary = ctx.store().cost_aggregate(month).await?;
            done.push(json!({"month": month.format("%Y-%m").to_string(),
                             "usage_rows": summary.usage_rows,
                             "cost_rows": summary.cost_rows}));
        }
        Ok(json!({"months": done}))
    })
}

/// Register `cost.aggregate`.
pub fn register(steps: &mut StepRegistry) {
    steps.register("cost.aggregate", aggregate);
}
