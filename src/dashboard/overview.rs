//! The overview: jobs per state, completed and failed jobs per minute over the last hour,
//! and every queue (paused or not, latency, workers). Its parts refresh themselves.

use super::html::{badge, minute_chart, ms, url};
use super::{PageError, gate, render};
use crate::api::AppState;
use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::queue::summary::{self, QueueSummary};
use crate::types::{JobState, MinuteCount};
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DurationRound, Utc};
use maud::{Markup, html};
use std::collections::BTreeMap;

const CHART_MINUTES: i64 = 60;

pub(super) async fn page(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
) -> Result<Response, PageError> {
    let caller = gate(caller)?;
    // The overview covers every tenant: a tenant admin lands on their own tenant's page.
    if let Some(own) = caller.confined_to() {
        return Ok(Redirect::to(&format!("/dashboard/tenant/{own}")).into_response());
    }
    caller.may_read(None)?;
    let queues = summary::summaries(&state.store).await?;
    let per_minute = state.store.jobs_per_minute(None, CHART_MINUTES).await?;
    let total = |job_state: JobState| queues.iter().map(|q| q.count(job_state)).sum::<i64>();
    let body = html! {
        div.cards id="totals" data-live {
            @for job_state in JobState::ALL {
                a.card href={ "/dashboard/jobs?state=" (job_state.as_str()) } id={ "count-" (job_state.as_str()) } {
                    (badge(job_state)) b { (total(job_state)) }
                }
            }
        }
        div id="charts" data-live { (charts(&per_minute, CHART_MINUTES)) }
        h2 { "Queues" }
        (queue_table(&queues))
    };
    Ok(render("Overview", &caller, body).into_response())
}

/// Completed and failed per minute over the last `minutes`, as two bar charts.
pub(super) fn charts(points: &[MinuteCount], minutes: i64) -> Markup {
    let now = Utc::now()
        .duration_trunc(chrono::Duration::minutes(1))
        .unwrap_or_else(|_| Utc::now());
    let by_minute: BTreeMap<i64, &MinuteCount> = points
        .iter()
        .map(|m| (m.minute.timestamp() / 60, m))
        .collect();
    let first = now.timestamp() / 60 - (minutes - 1);
    let series = |pick: fn(&MinuteCount) -> i64| -> Vec<i64> {
        (0..minutes)
            .map(|i| by_minute.get(&(first + i)).map(|m| pick(m)).unwrap_or(0))
            .collect()
    };
    html! {
        h2 { "Completed per minute, last hour" }
        (minute_chart("throughput", "completed jobs per minute", &series(|m| m.completed), "#2d6cdf"))
        h2 { "Failed per minute, last hour" }
        (minute_chart("failures", "failed jobs per minute", &series(|m| m.failed), "#c0392b"))
    }
}

/// Every queue with its state, depth per state, latency and workers.
pub(super) fn queue_table(queues: &[QueueSummary]) -> Markup {
    html! {
        table id="queues" data-live {
            tr {
                th { "queue" } th { "state" }
                @for job_state in JobState::ALL { th.num { (job_state.as_str()) } }
                th.num { "oldest waiting" } th.num { "workers" } th.num { "concurrency" }
            }
            @for queue in queues {
                tr id={ "queue-" (queue.queue) } {
                    td { a href={ "/dashboard/queues/" (url(&queue.queue)) } { (queue.queue) } }
                    td { (badge(if queue.paused { "paused" } else { "active" })) }
                    @for job_state in JobState::ALL { td.num { (queue.count(job_state)) } }
                    td.num { (ms(queue.oldest_available_ms)) }
                    td.num { (queue.live_workers) }
                    td.num { (queue.concurrency) }
                }
            }
        }
    }
}
