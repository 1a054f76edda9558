//! Workflow runs (the list, and one run's steps as a timeline with progress bars, with
//! retry from the failed step) and the cron schedules with their next fire times.

use super::html::{badge, button, esc, page as layout, time, took};
use super::{PageError, gate, who};
use crate::api::AppState;
use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::api::runs as api_runs;
use crate::store::runs::{RunRecord, RunState, StepRecord, StepState};
use axum::extract::{Path, Query, State};
use axum::response::{Html, Redirect};
use chrono::Utc;
use serde::Deserialize;
use serde_json::Value;
use std::fmt::Write;

#[derive(Debug, Default, Deserialize)]
pub(super) struct RunFilters {
    #[serde(default)]
    state: String,
}

/// How far a run is: its finished steps out of all.
fn run_done(run: &RunRecord) -> f64 {
    if run.state == RunState::Completed {
        return 1.0;
    }
    let steps = run.steps.len().max(1) as f64;
    run.steps
        .iter()
        .filter(|s| s.state == StepState::Completed)
        .count() as f64
        / steps
}

/// How far a step is: done when finished; from its reported progress (`{"done": n,
/// "of": m}` or any pair of numbers named like that) while it runs.
fn step_done(step: &StepRecord) -> Option<f64> {
    match step.state {
        StepState::Completed | StepState::Compensated => Some(1.0),
        StepState::Pending => Some(0.0),
        _ => {
            let progress = step.progress.as_ref()?;
            let of = progress.get("of").and_then(Value::as_f64)?;
            let done = ["done", "rows", "deleted", "delivered"]
                .iter()
                .find_map(|k| progress.get(*k).and_then(Value::as_f64))?;
            (of > 0.0).then(|| (done / of).clamp(0.0, 1.0))
        }
    }
}

fn bar(id: &str, left: f64, width: f64) -> String {
    format!(
        r#"<div class="bar" id="{id}"><span style="left:{:.1}%;width:{:.1}%"></span></div>"#,
        left * 100.0,
        (width * 100.0).max(0.5)
    )
}

fn visible(caller: &Caller, run: &RunRecord) -> bool {
    caller.may_read(api_runs::tenant_of(run)).is_ok()
}

pub(super) async fn list(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    Query(filters): Query<RunFilters>,
) -> Result<Html<String>, PageError> {
    let caller = gate(caller)?;
    let run_state = match filters.state.trim() {
        "" => None,
        s => Some(s.parse::<RunState>().map_err(ApiError::bad_request)?),
    };
    let runs = state.store.runs_list(run_state, 200).await?;
    let mut body = String::from(
        r#"<table id="runs"><tr><th>id</th><th>workflow</th><th>state</th><th>progress</th><th>step</th><th>started</th><th>finished</th><th>error</th></tr>"#,
    );
    for run in runs.iter().filter(|r| visible(&caller, r)) {
        let step = run
            .steps
            .get(usize::try_from(run.current_step).unwrap_or(0))
            .map(|s| s.name.as_str())
            .unwrap_or("");
        let _ = write!(
            body,
            r#"<tr><td><a href="/dashboard/runs/{id}">{id}</a></td><td>{wf}</td><td>{state}</td><td>{bar}</td><td>{step}</td><td>{start}</td><td>{end}</td><td class="error">{error}</td></tr>"#,
            id = run.id,
            wf = esc(&run.workflow),
            state = badge(run.state),
            bar = bar(&format!("run-progress-{}", run.id), 0.0, run_done(run)),
            step = esc(step),
            start = time(Some(run.created_at)),
            end = time(run.finished_at),
            error = esc(run.error.as_deref().unwrap_or("")),
        );
    }
    body.push_str("</table>");
    Ok(Html(layout("Runs", &who(&caller), &body)))
}

pub(super) async fn show(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    Path(id): Path<String>,
) -> Result<Html<String>, PageError> {
    let caller = gate(caller)?;
    let id = api_runs::run_id(&id)?;
    let run = api_runs::load(&state, id).await?;
    caller.may_read(api_runs::tenant_of(&run))?;
    // The timeline spans from the run's start to its end (or now).
    let start = run.created_at;
    let end = run.finished_at.unwrap_or_else(Utc::now);
    let span = (end - start).num_milliseconds().max(1) as f64;
    let offset =
        |at: chrono::DateTime<Utc>| ((at - start).num_milliseconds() as f64 / span).clamp(0.0, 1.0);
    let mut body = format!(
        r#"<table><tr><th>workflow</th><td>{wf}</td></tr><tr><th>state</th><td id="run-state">{state}</td></tr>
<tr><th>progress</th><td>{bar}</td></tr><tr><th>started</th><td>{start}</td></tr><tr><th>finished</th><td>{end}</td></tr>
<tr><th>error</th><td class="error">{error}</td></tr><tr><th>idempotency key</th><td>{key}</td></tr></table>"#,
        wf = esc(&run.workflow),
        state = badge(run.state),
        bar = bar("run-progress", 0.0, run_done(&run)),
        start = time(Some(run.created_at)),
        end = time(run.finished_at),
        error = esc(run.error.as_deref().unwrap_or("")),
        key = esc(run.idempotency_key.as_deref().unwrap_or("—")),
    );
    if run.state == RunState::Failed {
        body.push_str(&button(
            &format!("/dashboard/runs/{id}/retry"),
            "Retry from the failed step",
            "primary",
        ));
    }
    body.push_str(
        r#"<h2>Steps</h2><table id="steps"><tr><th>#</th><th>step</th><th>state</th><th>timeline</th><th>progress</th><th>took</th><th>job</th><th>error</th></tr>"#,
    );
    for step in &run.steps {
        let timeline = match step.started_at {
            Some(started) => {
                let left = offset(started);
                let right = offset(step.finished_at.unwrap_or(end));
                bar(&format!("timeline-{}", step.idx), left, right - left)
            }
            None => String::new(),
        };
        let progress = match step_done(step) {
            Some(done) => bar(&format!("progress-{}", step.idx), 0.0, done),
            None => esc(step
                .progress
                .as_ref()
                .map(Value::to_string)
                .unwrap_or_default()),
        };
        let job = step
            .job_id
            .map(|j| format!(r#"<a href="/dashboard/jobs/{j}">{j}</a>"#))
            .unwrap_or_default();
        let _ = write!(
            body,
            r#"<tr><td>{idx}</td><td>{name}</td><td>{state}</td><td>{timeline}</td><td>{progress}</td><td>{took}</td><td>{job}</td><td class="error">{error}</td></tr>"#,
            idx = step.idx,
            name = esc(&step.name),
            state = badge(step.state),
            took = took(step.started_at, step.finished_at),
            error = esc(step.error.as_deref().unwrap_or("")),
        );
    }
    let _ = write!(
        body,
        "</table><h2>Parameters</h2><pre>{}</pre>",
        esc(serde_json::to_string_pretty(&run.params).unwrap_or_default())
    );
    Ok(Html(layout(&format!("Run {id}"), &who(&caller), &body)))
}

pub(super) async fn retry(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    Path(id): Path<String>,
) -> Result<Redirect, PageError> {
    let caller = gate(caller)?;
    let id = api_runs::act_on(&state, &caller, &id, "retry").await?;
    Ok(Redirect::to(&format!("/dashboard/runs/{id}")))
}

pub(super) async fn schedules(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
) -> Result<Html<String>, PageError> {
    let caller = gate(caller)?;
    let mut body = String::from(
        r#"<table id="schedules"><tr><th>workflow</th><th>cron</th><th>time zone</th><th>next fire times (UTC)</th></tr>"#,
    );
    for fire in crate::workflow::schedule::next_fires(state.engine.workflows(), Utc::now(), 3) {
        let at: Vec<String> = fire.at.iter().map(|t| time(Some(*t))).collect();
        let _ = write!(
            body,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            esc(&fire.workflow),
            esc(&fire.cron),
            esc(&fire.timezone),
            at.join("<br>")
        );
    }
    body.push_str("</table>");
    Ok(Html(layout("Schedules", &who(&caller), &body)))
}
