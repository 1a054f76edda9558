//! Workflow runs: the list, and one run drawn as its step graph (forward steps by level,
//! parallel branches stacked, then the compensations that undid completed steps, latest
//! first), with each step's input, output,
//! attempts, timing and compensation; cancel and retry. Also the cron schedules.

use super::html::{badge, bar, button, notice, time, took};
use super::{PageError, gate, render};
use crate::api::AppState;
use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::api::runs as api_runs;
use crate::store::runs::{RunRecord, RunState, StepRecord, StepState};
use crate::types::JobRecord;
use crate::workflow::{StepDef, graph};
use axum::extract::{Path, Query, State};
use axum::response::{Html, Redirect};
use chrono::Utc;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Default, Deserialize)]
pub(super) struct RunFilters {
    #[serde(default)]
    state: String,
    before_id: Option<i64>,
    after_id: Option<i64>,
}

const PAGE: i64 = 50;

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

fn visible(caller: &Caller, run: &RunRecord) -> bool {
    caller.may_read(api_runs::tenant_of(run)).is_ok()
}

fn json(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
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
    let runs = state
        .store
        .runs_page(&crate::store::runs::RunPage {
            state: run_state,
            before_id: filters.before_id,
            after_id: filters.after_id,
            tenant: caller.confined_to(),
            limit: PAGE,
        })
        .await?;
    // The total spans every tenant: shown to callers who see every tenant's runs.
    let total: Option<i64> = match caller.confined_to() {
        Some(_) => None,
        None => Some(
            state
                .store
                .runs_count_by_state()
                .await?
                .iter()
                .filter(|(_, s, _)| run_state.is_none_or(|wanted| *s == wanted))
                .map(|(_, _, n)| n)
                .sum(),
        ),
    };
    let full = runs.len() as i64 == PAGE;
    let query = |cursor: &str, id: i64| {
        format!(
            "/dashboard/runs?state={}&{cursor}={id}",
            super::html::url(&filters.state)
        )
    };
    let newer = match runs.first() {
        Some(first) if filters.before_id.is_some() || (filters.after_id.is_some() && full) => {
            Some(query("after_id", first.id))
        }
        _ => None,
    };
    let older = match runs.last() {
        Some(last) if full || filters.after_id.is_some() => Some(query("before_id", last.id)),
        _ => None,
    };
    let body = html! {
        form method="get" action="/dashboard/runs" class="filters" {
            label { "state"
                select name="state" id="filter-state" {
                    option value="" { "any" }
                    @for s in ["queued", "running", "compensating", "completed", "failed", "cancelled"] {
                        option selected[filters.state == s] { (s) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        p.pager id="pager" {
            span id="total" {
                @if let Some(total) = total { (total) " runs" } @else { "your tenant's runs" }
                " · showing " (runs.len()) ", newest first"
            }
            @if let Some(href) = newer { a id="newer" href=(href) { "← Newer" } }
            @if let Some(href) = older { a id="older" href=(href) { "Older →" } }
        }
        table id="runs" data-live {
            tr { th { "id" } th { "workflow" } th { "state" } th { "progress" } th { "step" } th { "started" } th { "finished" } th { "error" } }
            @for run in runs.iter().filter(|r| visible(&caller, r)) {
                tr id={ "run-" (run.id) } {
                    td { a href={ "/dashboard/runs/" (run.id) } { (run.id) } }
                    td { (run.workflow) }
                    td { (badge(run.state)) }
                    td { (bar(&format!("run-progress-{}", run.id), 0.0, run_done(run))) }
                    td { (run.steps.get(usize::try_from(run.current_step).unwrap_or(0)).map(|s| s.name.as_str()).unwrap_or("")) }
                    td { (time(Some(run.created_at))) }
                    td { (time(run.finished_at)) }
                    td.error { (run.error.as_deref().unwrap_or("")) }
                }
            }
        }
    };
    Ok(render("Runs", &caller, body))
}

/// After an action on a run (`?done=retry|cancel`).
#[derive(Deserialize, Default)]
pub(super) struct Done {
    #[serde(default)]
    done: String,
}

pub(super) async fn show(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    Path(id): Path<String>,
    Query(done): Query<Done>,
) -> Result<Html<String>, PageError> {
    let caller = gate(caller)?;
    let id = api_runs::run_id(&id)?;
    let run = api_runs::load(&state, id).await?;
    caller.may_read(api_runs::tenant_of(&run))?;
    // The steps the run follows: those of the version it started on.
    let steps = state.engine.steps_of(&run).await.unwrap_or_default();
    let compensation_of = |step: &StepRecord| {
        steps
            .get(usize::try_from(step.idx).ok()?)
            .and_then(|s| s.compensate.clone())
    };
    // Drawn by level: a column's steps need only steps of earlier columns (parallel branches
    // stack); a step without its definition (none known) goes in a column of its own.
    let levels: Vec<Vec<&StepRecord>> = if steps.len() == run.steps.len() {
        graph::levels(&steps)
            .iter()
            .map(|level| level.iter().filter_map(|at| run.steps.get(*at)).collect())
            .collect()
    } else {
        run.steps.iter().map(|s| vec![s]).collect()
    };
    let needs_of = |step: &StepRecord| -> Vec<String> {
        let at = usize::try_from(step.idx).unwrap_or(0);
        graph::parents(&steps, at)
            .iter()
            .filter_map(|p| run.steps.get(usize::try_from(*p).ok()?))
            .map(|p| p.name.clone())
            .collect()
    };
    // Each step's job, with its attempts.
    let mut jobs: Vec<Option<JobRecord>> = Vec::with_capacity(run.steps.len());
    for step in &run.steps {
        jobs.push(match step.job_id {
            Some(job) => state.store.job_get(job).await?,
            None => None,
        });
    }
    let compensated: Vec<&StepRecord> = run
        .steps
        .iter()
        .rev()
        .filter(|s| s.compensation.is_some())
        .collect();
    let message = match done.done.as_str() {
        "retry" => Some("retried: the run goes on from its failed step".to_string()),
        "cancel" => Some("cancelled the run".to_string()),
        _ => None,
    };
    let node = |step: &StepRecord, compensation: bool| {
        let state_class = format!(
            "node node-{}{}",
            step.state,
            if compensation { " comp" } else { "" }
        );
        html! {
            a class=(state_class) id={ "node-" (step.idx) (if compensation { "-undo" } else { "" }) } href={ "#step-" (step.idx) } {
                b { @if compensation { "undo " } (step.name) } br;
                @match (compensation, &step.compensation) {
                    (true, Some(undo)) => {
                        @if step.state == StepState::Completed { span.state.state-dead { "undo died" } }
                        @else { (badge(step.state)) }
                        " " (took(undo.started_at, undo.finished_at))
                    }
                    _ => { (badge(step.state)) " " (took(step.started_at, step.finished_at)) }
                }
                @if let Some(done) = step_done(step) { (bar(&format!("progress-{}", step.idx), 0.0, done)) }
            }
        }
    };
    let body = html! {
        (notice(message))
        div id="run-live" data-live {
            table {
                tr { th { "workflow" } td { (run.workflow) } }
                tr { th { "state" } td id="run-state" { (badge(run.state)) } }
                tr { th { "progress" } td { (bar("run-progress", 0.0, run_done(&run))) } }
                tr { th { "started" } td { (time(Some(run.created_at))) } }
                tr { th { "finished" } td { (time(run.finished_at)) } }
                tr { th { "took" } td { (took(Some(run.created_at), run.finished_at.or(Some(Utc::now())))) } }
                tr { th { "error" } td.error id="run-error" { (run.error.as_deref().unwrap_or("")) } }
                tr { th { "idempotency key" } td { (run.idempotency_key.as_deref().unwrap_or("—")) } }
            }
            p {
                @if run.state == RunState::Failed {
                    (button(&format!("/dashboard/runs/{id}/retry"), "Retry from the failed step", "primary"))
                }
                @if matches!(run.state, RunState::Queued | RunState::Running) {
                    (button(&format!("/dashboard/runs/{id}/cancel"), "Cancel the run", "danger"))
                }
            }
            h2 { "Steps" }
            div.graph id="graph" {
                @for (i, level) in levels.iter().enumerate() {
                    @if i > 0 { span.arrow { "→" } }
                    div.level { @for step in level { (node(step, false)) } }
                }
            }
            @if !compensated.is_empty() {
                h2 { "Compensation (latest step first)" }
                div.graph id="compensation" {
                    @for (i, step) in compensated.iter().enumerate() {
                        @if i > 0 { span.arrow { "→" } }
                        (node(step, true))
                    }
                }
            }
            @for (step, job) in run.steps.iter().zip(&jobs) {
                (step_details(&run, &steps, step, job.as_ref(), compensation_of(step), &needs_of(step)))
            }
            h2 { "Parameters" }
            pre id="params" { (json(&run.params)) }
        }
    };
    Ok(render(&format!("Run {id}"), &caller, body))
}

/// One step: the steps it needs, its input (what it reads: their outputs, or the run's
/// parameters), output, progress, timing, compensation and its job's attempts.
fn step_details(
    run: &RunRecord,
    steps: &[StepDef],
    step: &StepRecord,
    job: Option<&JobRecord>,
    compensation: Option<String>,
    needs: &[String],
) -> Markup {
    let idx = usize::try_from(step.idx).unwrap_or(0);
    let input = (!steps.is_empty()).then(|| graph::input_of(steps, run, idx));
    html! {
        section id={ "step-" (step.idx) } {
            h2 { (step.idx) ". " (step.name) " " (badge(step.state)) }
            table {
                tr { th { "started" } td { (time(step.started_at)) } th { "ended" } td { (time(step.finished_at)) } th { "took" } td { (took(step.started_at, step.finished_at)) } }
                tr {
                    th { "job" }
                    td { @if let Some(job) = step.job_id { a href={ "/dashboard/jobs/" (job) } { (job) } } @else { "—" } }
                    th { "attempts" } td { @if let Some(job) = job { (job.attempts.len()) " of " (job.max_attempts) } @else { "—" } }
                    th { "compensation" }
                    td {
                        @match (&compensation, step.state) {
                            (Some(handler), StepState::Compensated) => { "undone by " code { (handler) } }
                            (Some(handler), StepState::Compensating) => { "being undone by " code { (handler) } }
                            (Some(handler), _) => { code { (handler) } " if a later step fails" }
                            (None, _) => { "none" }
                        }
                    }
                }
                @if let Some(undo) = &step.compensation {
                    tr.undo {
                        th { "undo job" } td { a href={ "/dashboard/jobs/" (undo.job_id) } { (undo.job_id) } }
                        th { "undo started" } td { (time(undo.started_at)) }
                        th { "undo took" } td { (took(undo.started_at, undo.finished_at)) }
                    }
                }
                tr { th { "needs" } td.needs colspan="5" { @if needs.is_empty() { "— (starts with the run)" } @else { (needs.join(", ")) } } }
                @if let Some(error) = &step.error { tr { th { "error" } td.error colspan="5" { (error) } } }
            }
            details open[idx == 0 || step.output.is_some()] {
                summary { "input" }
                pre.input { (input.as_ref().map(json).unwrap_or_else(|| "—".into())) }
            }
            details open[step.output.is_some()] {
                summary { "output" }
                pre.output id={ "output-" (step.idx) } { (step.output.as_ref().map(json).unwrap_or_else(|| "—".into())) }
            }
            @if let Some(progress) = &step.progress { details { summary { "progress" } pre { (json(progress)) } } }
            @if let Some(job) = job {
                @if !job.attempts.is_empty() {
                    table.attempts {
                        tr { th { "#" } th { "worker" } th { "started" } th { "took" } th { "error" } }
                        @for attempt in &job.attempts {
                            tr {
                                td { (attempt.attempt) } td { (attempt.worker.as_deref().unwrap_or("—")) }
                                td { (time(attempt.started_at)) } td { (took(attempt.started_at, attempt.finished_at)) }
                                td.error { (attempt.error.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub(super) async fn retry(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    Path(id): Path<String>,
) -> Result<Redirect, PageError> {
    let caller = gate(caller)?;
    let id = api_runs::act_on(&state, &caller, &id, "retry").await?;
    Ok(Redirect::to(&format!("/dashboard/runs/{id}?done=retry")))
}

pub(super) async fn cancel(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    Path(id): Path<String>,
) -> Result<Redirect, PageError> {
    let caller = gate(caller)?;
    let id = api_runs::act_on(&state, &caller, &id, "cancel").await?;
    Ok(Redirect::to(&format!("/dashboard/runs/{id}?done=cancel")))
}

pub(super) async fn schedules(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
) -> Result<Html<String>, PageError> {
    let caller = gate(caller)?;
    let fires = crate::workflow::schedule::next_fires(state.engine.workflows(), Utc::now(), 3);
    let body = html! {
        table id="schedules" {
            tr { th { "workflow" } th { "cron" } th { "time zone" } th { "next fire times (UTC)" } }
            @for fire in &fires {
                tr {
                    td { (fire.workflow) } td { code { (fire.cron) } } td { (fire.timezone) }
                    td { @for (i, at) in fire.at.iter().enumerate() { @if i > 0 { br; } (time(Some(*at))) } }
                }
            }
        }
    };
    Ok(render("Schedules", &caller, body))
}
