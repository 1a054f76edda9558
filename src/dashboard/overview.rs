//! The overview: jobs per state, per queue and state, and completed jobs per minute over
//! the last hour as a bar chart.

use super::html::{badge, esc, page as layout, url};
use super::{PageError, gate, who};
use crate::api::AppState;
use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::types::JobState;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::{DurationRound, Utc};
use std::collections::BTreeMap;
use std::fmt::Write;

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
    let counts = state.store.jobs_count_by_state().await?;
    let mut totals: BTreeMap<&str, i64> = BTreeMap::new();
    let mut queues: BTreeMap<&str, BTreeMap<&str, i64>> = BTreeMap::new();
    for count in &counts {
        *totals.entry(count.state.as_str()).or_default() += count.count;
        *queues
            .entry(count.queue.as_str())
            .or_default()
            .entry(count.state.as_str())
            .or_default() += count.count;
    }
    let mut body = String::from(r#"<div class="cards" id="totals">"#);
    for job_state in JobState::ALL {
        let n = totals.get(job_state.as_str()).copied().unwrap_or(0);
        let _ = write!(
            body,
            r#"<a class="card" href="/dashboard/jobs?state={s}" id="count-{s}">{badge}<b>{n}</b></a>"#,
            s = job_state.as_str(),
            badge = badge(job_state),
        );
    }
    body.push_str("</div><h2>Completed per minute, last hour</h2>");
    body.push_str(&chart(
        &state.store.jobs_per_minute(None, CHART_MINUTES).await?,
    ));
    body.push_str("<h2>Queues</h2><table id=\"queues\"><tr><th>queue</th>");
    for job_state in JobState::ALL {
        let _ = write!(body, r#"<th class="num">{}</th>"#, job_state.as_str());
    }
    body.push_str("</tr>");
    for (queue, states) in &queues {
        let _ = write!(
            body,
            r#"<tr><td><a href="/dashboard/jobs?queue={}">{}</a></td>"#,
            url(queue),
            esc(queue)
        );
        for job_state in JobState::ALL {
            let n = states.get(job_state.as_str()).copied().unwrap_or(0);
            let _ = write!(body, r#"<td class="num">{n}</td>"#);
        }
        body.push_str("</tr>");
    }
    body.push_str("</table>");
    Ok(Html(layout("Overview", &who(&caller), &body)).into_response())
}

/// An SVG bar chart of completed jobs per minute (empty minutes are zero bars).
fn chart(points: &[crate::types::MinuteCount]) -> String {
    let now = Utc::now()
        .duration_trunc(chrono::Duration::minutes(1))
        .unwrap_or_else(|_| Utc::now());
    let by_minute: BTreeMap<i64, i64> = points
        .iter()
        .map(|m| (m.minute.timestamp() / 60, m.completed))
        .collect();
    let first = now.timestamp() / 60 - (CHART_MINUTES - 1);
    let values: Vec<i64> = (0..CHART_MINUTES)
        .map(|i| by_minute.get(&(first + i)).copied().unwrap_or(0))
        .collect();
    let max = values.iter().copied().max().unwrap_or(0).max(1);
    let (width, height, bar) = (720.0, 120.0, 12.0);
    let mut svg = format!(
        r#"<svg id="throughput" width="{width}" height="{h}" viewBox="0 0 {width} {h}" role="img" aria-label="completed jobs per minute">"#,
        h = height + 16.0
    );
    for (i, n) in values.iter().enumerate() {
        let bar_height = height * (*n as f64) / (max as f64);
        let _ = write!(
            svg,
            r##"<rect x="{x}" y="{y}" width="{w}" height="{bar_height}" fill="#2d6cdf"><title>{n} jobs</title></rect>"##,
            x = i as f64 * bar,
            y = height - bar_height,
            w = bar - 2.0,
        );
    }
    let _ = write!(
        svg,
        r##"<text x="0" y="{y}" font-size="11" fill="#555">-60 min</text><text x="{r}" y="{y}" font-size="11" fill="#555" text-anchor="end">now · max {max}/min</text></svg>"##,
        y = height + 13.0,
        r = width,
    );
    svg
}
