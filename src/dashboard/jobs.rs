//! Jobs: the list with search (state, queue, kind, tenant, creation time, text in payloads
//! and errors), newest first with totals and paging both ways; one job with its attempts and
//! actions; the dead-letter queue with single and confirmed bulk retry and discard.

use super::html::{badge, button, notice, time, took, url};
use super::{PageError, gate, render};
use crate::api::AppState;
use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::api::jobs::{self as api_jobs, COUNT_CAP};
use crate::types::{JobFilter, JobId, JobRecord, JobState};
use axum::extract::{Form, Path, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::Utc;
use maud::{Markup, html};
use serde::Deserialize;

const PAGE: i64 = 50;

/// The time ranges offered, in hours ("" is any time).
const RANGES: [(&str, &str); 5] = [
    ("", "any time"),
    ("1", "last hour"),
    ("24", "last 24 h"),
    ("168", "last 7 days"),
    ("720", "last 30 days"),
];

/// The search of the job list and the dead-letter queue (empty fields: any).
#[derive(Debug, Default, Deserialize)]
pub(super) struct Filters {
    #[serde(default)]
    state: String,
    #[serde(default)]
    queue: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    tenant: String,
    /// Text in the payload or the errors.
    #[serde(default)]
    q: String,
    /// Created in the last this many hours (one of [`RANGES`]).
    #[serde(default)]
    hours: String,
    after_id: Option<JobId>,
    before_id: Option<JobId>,
}

fn some(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// The start of one of the [`RANGES`] (`None`: any time).
fn since_hours(hours: &str) -> Result<Option<chrono::DateTime<Utc>>, ApiError> {
    match hours.trim() {
        "" => Ok(None),
        hours => {
            let n: i64 = hours
                .parse()
                .ok()
                .filter(|_| RANGES.iter().any(|(r, _)| *r == hours))
                .ok_or_else(|| ApiError::bad_request(format!("no time range `{hours}`")))?;
            Ok(Some(Utc::now() - chrono::Duration::hours(n)))
        }
    }
}

/// How a range reads.
fn range_label(hours: &str) -> &'static str {
    RANGES
        .iter()
        .find(|(r, _)| *r == hours.trim())
        .map_or("any time", |(_, label)| *label)
}

impl Filters {
    /// A text search reads every job in its range: without one it takes the last 24 hours
    /// (the API's default too, `api::jobs::TEXT_SEARCH_DEFAULT_HOURS`), and the form shows it.
    fn bounded(mut self) -> Self {
        if !self.q.trim().is_empty() && self.hours.trim().is_empty() {
            self.hours = api_jobs::TEXT_SEARCH_DEFAULT_HOURS.to_string();
        }
        self
    }

    fn to_filter(&self, caller: &Caller, state: Option<JobState>) -> Result<JobFilter, ApiError> {
        let since = since_hours(&self.hours)?;
        if self.q.chars().count() > 200 {
            return Err(ApiError::bad_request(
                "the search text is at most 200 characters",
            ));
        }
        Ok(JobFilter {
            state,
            queue: some(&self.queue),
            kind: some(&self.kind),
            tenant: caller.scope_tenant(some(&self.tenant))?,
            text: some(&self.q),
            since,
            after_id: self.after_id,
            before_id: self.before_id,
            newest_first: true,
            limit: Some(PAGE),
            ..Default::default()
        })
    }

    /// This search's query string with a paging cursor.
    fn query(&self, cursor: &str, id: JobId) -> String {
        format!(
            "state={}&queue={}&kind={}&tenant={}&q={}&hours={}&{cursor}={id}",
            url(&self.state),
            url(&self.queue),
            url(&self.kind),
            url(&self.tenant),
            url(&self.q),
            url(&self.hours),
        )
    }

    fn form(&self, action: &str, with_state: bool) -> Markup {
        let field = |name: &str, label: &str, value: &str| {
            html! { label { (label) input name=(name) id={ "filter-" (name) } value=(value); } }
        };
        html! {
            form method="get" action=(action) class="filters" {
                @if with_state {
                    label { "state"
                        select name="state" id="filter-state" {
                            option value="" { "any" }
                            @for s in JobState::ALL {
                                option selected[self.state == s.as_str()] { (s.as_str()) }
                            }
                        }
                    }
                }
                (field("queue", "queue", &self.queue))
                (field("kind", "kind", &self.kind))
                (field("tenant", "tenant", &self.tenant))
                (field("q", "text in payload or errors", &self.q))
                label { "created"
                    select name="hours" id="filter-hours" {
                        @for (value, label) in RANGES {
                            option value=(value) selected[self.hours == value] { (label) }
                        }
                    }
                }
                button type="submit" id="search" { "Search" }
            }
        }
    }
}

fn last_error(job: &JobRecord) -> String {
    job.attempts
        .iter()
        .rev()
        .find_map(|a| a.error.clone())
        .unwrap_or_default()
}

fn table(jobs: &[JobRecord], actions: bool) -> Markup {
    html! {
        table id="jobs" {
            tr {
                th { "id" } th { "kind" } th { "queue" } th { "tenant" } th { "state" }
                th { "attempt" } th { "created" } th { "last error" }
                @if actions { th {} }
            }
            @for job in jobs {
                tr id={ "job-" (job.id) } {
                    td { a href={ "/dashboard/jobs/" (job.id) } { (job.id) } }
                    td { (job.kind) } td { (job.queue) } td { (job.tenant) }
                    td { (badge(job.state)) }
                    td { (job.attempt) "/" (job.max_attempts) }
                    td { (time(Some(job.created_at))) }
                    td.error { (last_error(job)) }
                    @if actions {
                        td {
                            (button(&format!("/dashboard/jobs/{}/retry", job.id), "Retry", "primary"))
                            (button(&format!("/dashboard/jobs/{}/discard", job.id), "Discard", "danger"))
                        }
                    }
                }
            }
            @if jobs.is_empty() { tr { td colspan="9" { "no job matches" } } }
        }
    }
}

/// The total, and links to newer and older pages.
fn pager(jobs: &[JobRecord], total: i64, filters: &Filters, base: &str) -> Markup {
    let full = jobs.len() as i64 == PAGE;
    let paged = filters.after_id.is_some() || filters.before_id.is_some();
    let newer = match jobs.first() {
        Some(first) if filters.before_id.is_some() || (filters.after_id.is_some() && full) => {
            Some(filters.query("after_id", first.id))
        }
        _ => None,
    };
    let older = match jobs.last() {
        Some(last) if full || filters.after_id.is_some() => {
            Some(filters.query("before_id", last.id))
        }
        _ => None,
    };
    html! {
        p.pager id="pager" {
            span id="total" {
                @if total >= COUNT_CAP { "more than " (COUNT_CAP - 1) } @else { (total) }
                " matching"
                @if paged || full { " · showing " (jobs.len()) ", newest first" }
            }
            @if let Some(query) = newer { a id="newer" href={ (base) "?" (query) } { "← Newer" } }
            @if let Some(query) = older { a id="older" href={ (base) "?" (query) } { "Older →" } }
        }
    }
}

async fn search(state: &AppState, filter: &JobFilter) -> Result<(Vec<JobRecord>, i64), PageError> {
    let jobs = state.store.jobs_list(filter).await?;
    let total = state.store.jobs_count(filter, COUNT_CAP).await?;
    Ok((jobs, total))
}

pub(super) async fn list(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    Query(filters): Query<Filters>,
) -> Result<Html<String>, PageError> {
    let caller = gate(caller)?;
    let filters = filters.bounded();
    let job_state = some(&filters.state)
        .map(|s| {
            s.parse::<JobState>()
                .map_err(|_| ApiError::bad_request(format!("unknown job state `{s}`")))
        })
        .transpose()?;
    let (jobs, total) = search(&state, &filters.to_filter(&caller, job_state)?).await?;
    let body = html! {
        (filters.form("/dashboard/jobs", true))
        div id="results" data-live {
            (pager(&jobs, total, &filters, "/dashboard/jobs"))
            (table(&jobs, false))
        }
    };
    Ok(render("Jobs", &caller, body))
}

pub(super) async fn dead(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    Query(filters): Query<Filters>,
    Query(done): Query<Done>,
) -> Result<Html<String>, PageError> {
    let caller = gate(caller)?;
    let filters = filters.bounded();
    let (jobs, total) = search(&state, &filters.to_filter(&caller, Some(JobState::Dead))?).await?;
    let bulk = |action: &str, label: &str, class: &str| {
        html! {
            form method="post" action={ "/dashboard/dead/" (action) } class="inline" {
                input type="hidden" name="queue" value=(filters.queue);
                input type="hidden" name="kind" value=(filters.kind);
                input type="hidden" name="tenant" value=(filters.tenant);
                input type="hidden" name="q" value=(filters.q);
                input type="hidden" name="hours" value=(filters.hours);
                button type="submit" class=(class) id={ "bulk-" (action) } { (label) }
            }
        }
    };
    let body = html! {
        (notice(done.text()))
        (filters.form("/dashboard/dead", false))
        p { (bulk("retry", "Retry all matching", "primary")) " " (bulk("discard", "Discard all matching", "danger")) }
        div id="results" data-live {
            (pager(&jobs, total, &filters, "/dashboard/dead"))
            (table(&jobs, true))
        }
    };
    Ok(render("Dead letters", &caller, body))
}

pub(super) async fn show(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    Path(id): Path<String>,
    Query(done): Query<Done>,
) -> Result<Html<String>, PageError> {
    let caller = gate(caller)?;
    let id = api_jobs::job_id(&id)?;
    let job = api_jobs::load(&state, id).await?;
    caller.may_read(api_jobs::tenant_of(&job))?;
    let row = |name: &str, value: Markup| html! { tr { th { (name) } td { (value) } } };
    let body = html! {
        (notice(done.text()))
        div id="job-live" data-live {
            table id="job" {
                tr { th { "state" } td id="job-state" { (badge(job.state)) } }
                (row("kind", html! { (job.kind) }))
                (row("queue", html! { a href={ "/dashboard/queues/" (url(&job.queue)) } { (job.queue) } }))
                (row("tenant", html! { (job.tenant) }))
                (row("priority", html! { (job.priority) }))
                (row("attempt", html! { (job.attempt) " of " (job.max_attempts) }))
                (row("run at", html! { (time(Some(job.run_at))) }))
                (row("created", html! { (time(Some(job.created_at))) }))
                (row("finished", html! { (time(job.finished_at)) }))
                (row("unique key", html! { (job.unique_key.as_deref().unwrap_or("—")) }))
            }
            p {
                (button(&format!("/dashboard/jobs/{id}/retry"), "Retry", "primary")) " "
                (button(&format!("/dashboard/jobs/{id}/discard"), "Discard", "danger")) " "
                (button(&format!("/dashboard/jobs/{id}/cancel"), "Cancel", "danger"))
            }
            h2 { "Payload" }
            pre { (serde_json::to_string_pretty(&job.payload).unwrap_or_default()) }
            h2 { "Attempts" }
            table id="attempts" {
                tr { th { "#" } th { "worker" } th { "started" } th { "ended" } th { "took" } th { "error" } }
                @for attempt in &job.attempts {
                    tr {
                        td { (attempt.attempt) }
                        td { (attempt.worker.as_deref().unwrap_or("—")) }
                        td { (time(attempt.started_at)) }
                        td { (time(attempt.finished_at)) }
                        td { (took(attempt.started_at, attempt.finished_at)) }
                        td.error { (attempt.error.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    };
    Ok(render(&format!("Job {id}"), &caller, body))
}

pub(super) async fn act(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Redirect, PageError> {
    let caller = gate(caller)?;
    let (id, n) = api_jobs::act_on(&state, &caller, &id, &action).await?;
    Ok(Redirect::to(&format!(
        "/dashboard/jobs/{id}?done={}&n={n}",
        url(&action)
    )))
}

/// After an action: which one, and how many jobs it applied to (`?done=retry&n=3`).
#[derive(Deserialize, Default)]
pub(super) struct Done {
    #[serde(default)]
    done: String,
    n: Option<u64>,
    /// How many matching jobs a bulk action left as they were.
    refused: Option<u64>,
}

impl Done {
    /// The message after an action (only the actions there are: nothing from the URL is shown
    /// but a number).
    fn text(&self) -> Option<String> {
        let verb = match self.done.as_str() {
            "retry" => "retried",
            "discard" => "discarded",
            "cancel" => "cancelled",
            _ => return None,
        };
        let done = match self.n {
            Some(n) => format!("{verb} {n} job(s)"),
            None => format!("{verb}: done"),
        };
        Some(match self.refused {
            Some(refused) if refused > 0 => format!(
                "{done}; {refused} left as they were (their runs may not be retried: \
                 see each job)"
            ),
            _ => done,
        })
    }
}

/// The confirmation a bulk form carries once the operator has seen what it matches.
#[derive(Deserialize)]
pub(super) struct BulkForm {
    #[serde(default)]
    queue: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    q: String,
    #[serde(default)]
    hours: String,
    #[serde(default)]
    confirmed: String,
}

/// A bulk action: first a page saying how many dead jobs it matches, with a button that
/// confirms it; then the action and the dead-letter page with how many it applied to.
pub(super) async fn bulk(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    Path(action): Path<String>,
    Form(form): Form<BulkForm>,
) -> Result<Response, PageError> {
    let caller = gate(caller)?;
    let filter = api_jobs::DeadFilter {
        queue: some(&form.queue),
        kind: some(&form.kind),
        tenant: some(&form.tenant),
        text: some(&form.q),
        since: since_hours(&form.hours)?,
    };
    if form.confirmed != "yes" {
        let label = match action.as_str() {
            "retry" => "Retry",
            "discard" => "Discard",
            other => {
                return Err(ApiError::not_found(format!(
                    "no bulk action `{other}`; retry or discard"
                ))
                .into());
            }
        };
        let scope = api_jobs::dead_scope(&caller, filter)?;
        let matching = state.store.jobs_count(&scope, COUNT_CAP).await?;
        let count = if matching >= COUNT_CAP {
            format!("more than {}", COUNT_CAP - 1)
        } else {
            matching.to_string()
        };
        let any = |v: &str| {
            if v.is_empty() {
                "any".to_string()
            } else {
                format!("“{v}”")
            }
        };
        let body = html! {
            p id="confirm-what" {
                (label) " " (count) " dead job(s) matching queue " (any(&form.queue)) ", kind "
                (any(&form.kind)) ", tenant " (any(&form.tenant)) ", text " (any(&form.q))
                ", created " (range_label(&form.hours)) "?"
            }
            form method="post" action={ "/dashboard/dead/" (action) } class="inline" {
                input type="hidden" name="queue" value=(form.queue);
                input type="hidden" name="kind" value=(form.kind);
                input type="hidden" name="tenant" value=(form.tenant);
                input type="hidden" name="q" value=(form.q);
                input type="hidden" name="hours" value=(form.hours);
                input type="hidden" name="confirmed" value="yes";
                button type="submit" class="primary" id={ "confirm-" (action) } { (label) " them" }
            }
            " " a href="/dashboard/dead" id="cancel" { "Cancel" }
        };
        return Ok(render(&format!("{label} dead jobs?"), &caller, body).into_response());
    }
    let (n, refused) = api_jobs::act_on_dead(&state, &caller, filter, &action).await?;
    Ok(Redirect::to(&format!(
        "/dashboard/dead?done={}&n={n}&refused={}",
        url(&action),
        refused.len()
    ))
    .into_response())
}
