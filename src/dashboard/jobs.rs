//! Jobs: the filtered list, one job with its attempts and actions, and the dead-letter
//! queue with single and bulk retry and discard.

use super::html::{badge, button, esc, page as layout, time, took, url};
use super::{PageError, gate, who};
use crate::api::AppState;
use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::api::jobs as api_jobs;
use crate::types::{JobFilter, JobId, JobRecord, JobState};
use axum::extract::{Form, Path, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use std::fmt::Write;

const PAGE: i64 = 100;

/// The filters of the job list and the dead-letter queue (empty fields: any).
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
    after_id: Option<JobId>,
}

fn some(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

impl Filters {
    fn to_filter(&self, caller: &Caller, state: Option<JobState>) -> Result<JobFilter, ApiError> {
        Ok(JobFilter {
            state,
            queue: some(&self.queue),
            kind: some(&self.kind),
            tenant: caller.scope_tenant(some(&self.tenant))?,
            after_id: self.after_id,
            limit: Some(PAGE),
            ..Default::default()
        })
    }

    fn query(&self, after_id: JobId) -> String {
        format!(
            "state={}&queue={}&kind={}&tenant={}&after_id={after_id}",
            url(&self.state),
            url(&self.queue),
            url(&self.kind),
            url(&self.tenant)
        )
    }

    fn form(&self, action: &str, with_state: bool) -> String {
        let field = |name: &str, value: &str| {
            format!(
                r#"<label>{name}<input name="{name}" id="filter-{name}" value="{}"></label>"#,
                esc(value)
            )
        };
        let mut form = format!(r#"<form method="get" action="{action}" class="filters">"#);
        if with_state {
            form.push_str(r#"<label>state<select name="state" id="filter-state"><option value="">any</option>"#);
            for s in JobState::ALL {
                let selected = if self.state == s.as_str() {
                    " selected"
                } else {
                    ""
                };
                let _ = write!(form, r#"<option{selected}>{}</option>"#, s.as_str());
            }
            form.push_str("</select></label>");
        }
        form.push_str(&field("queue", &self.queue));
        form.push_str(&field("kind", &self.kind));
        form.push_str(&field("tenant", &self.tenant));
        form.push_str(r#"<button type="submit">Filter</button></form>"#);
        form
    }
}

fn last_error(job: &JobRecord) -> String {
    job.attempts
        .iter()
        .rev()
        .find_map(|a| a.error.clone())
        .unwrap_or_default()
}

fn table(jobs: &[JobRecord], actions: bool) -> String {
    let mut out = String::from(
        r#"<table id="jobs"><tr><th>id</th><th>kind</th><th>queue</th><th>tenant</th><th>state</th><th>attempt</th><th>run at</th><th>last error</th>"#,
    );
    if actions {
        out.push_str("<th></th>");
    }
    out.push_str("</tr>");
    for job in jobs {
        let _ = write!(
            out,
            r#"<tr id="job-{id}"><td><a href="/dashboard/jobs/{id}">{id}</a></td><td>{kind}</td><td>{queue}</td><td>{tenant}</td><td>{state}</td><td>{attempt}/{max}</td><td>{run_at}</td><td class="error">{error}</td>"#,
            id = job.id,
            kind = esc(&job.kind),
            queue = esc(&job.queue),
            tenant = esc(&job.tenant),
            state = badge(job.state),
            attempt = job.attempt,
            max = job.max_attempts,
            run_at = time(Some(job.run_at)),
            error = esc(last_error(job)),
        );
        if actions {
            let _ = write!(
                out,
                "<td>{}{}</td>",
                button(
                    &format!("/dashboard/jobs/{}/retry", job.id),
                    "Retry",
                    "primary"
                ),
                button(
                    &format!("/dashboard/jobs/{}/discard", job.id),
                    "Discard",
                    "danger"
                ),
            );
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
    out
}

fn next_link(jobs: &[JobRecord], filters: &Filters, base: &str) -> String {
    match jobs.last() {
        Some(last) if jobs.len() as i64 == PAGE => format!(
            r#"<p><a id="next" href="{base}?{}">Next page →</a></p>"#,
            esc(filters.query(last.id))
        ),
        _ => String::new(),
    }
}

pub(super) async fn list(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    Query(filters): Query<Filters>,
) -> Result<Html<String>, PageError> {
    let caller = gate(caller)?;
    let job_state = some(&filters.state)
        .map(|s| {
            s.parse::<JobState>()
                .map_err(|_| ApiError::bad_request(format!("unknown job state `{s}`")))
        })
        .transpose()?;
    let jobs = state
        .store
        .jobs_list(&filters.to_filter(&caller, job_state)?)
        .await?;
    let body = format!(
        "{}{}{}",
        filters.form("/dashboard/jobs", true),
        table(&jobs, false),
        next_link(&jobs, &filters, "/dashboard/jobs")
    );
    Ok(Html(layout("Jobs", &who(&caller), &body)))
}

pub(super) async fn dead(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    Query(filters): Query<Filters>,
    Query(done): Query<Done>,
) -> Result<Html<String>, PageError> {
    let caller = gate(caller)?;
    let jobs = state
        .store
        .jobs_list(&filters.to_filter(&caller, Some(JobState::Dead))?)
        .await?;
    let bulk = |action: &str, label: &str, class: &str| {
        format!(
            r#"<form method="post" action="/dashboard/dead/{action}" class="inline">
<input type="hidden" name="queue" value="{q}"><input type="hidden" name="kind" value="{k}"><input type="hidden" name="tenant" value="{t}">
<button type="submit" class="{class}" id="bulk-{action}">{label}</button></form>"#,
            q = esc(&filters.queue),
            k = esc(&filters.kind),
            t = esc(&filters.tenant),
        )
    };
    let body = format!(
        r#"{}{}<p>{} {}</p>{}{}"#,
        done.notice(),
        filters.form("/dashboard/dead", false),
        bulk("retry", "Retry all matching", "primary"),
        bulk("discard", "Discard all matching", "danger"),
        table(&jobs, true),
        next_link(&jobs, &filters, "/dashboard/dead"),
    );
    Ok(Html(layout("Dead letters", &who(&caller), &body)))
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
    let mut body = done.notice();
    let _ = write!(
        body,
        r#"<table id="job"><tr><th>state</th><td id="job-state">{state}</td></tr>
<tr><th>kind</th><td>{kind}</td></tr><tr><th>queue</th><td>{queue}</td></tr>
<tr><th>tenant</th><td>{tenant}</td></tr><tr><th>priority</th><td>{priority}</td></tr>
<tr><th>attempt</th><td>{attempt} of {max}</td></tr><tr><th>run at</th><td>{run_at}</td></tr>
<tr><th>created</th><td>{created}</td></tr><tr><th>finished</th><td>{finished}</td></tr>
<tr><th>unique key</th><td>{unique}</td></tr></table>
<p>{retry} {discard} {cancel}</p><h2>Payload</h2><pre>{payload}</pre><h2>Attempts</h2>
<table id="attempts"><tr><th>#</th><th>worker</th><th>started</th><th>ended</th><th>took</th><th>error</th></tr>"#,
        state = badge(job.state),
        kind = esc(&job.kind),
        queue = esc(&job.queue),
        tenant = esc(&job.tenant),
        priority = job.priority,
        attempt = job.attempt,
        max = job.max_attempts,
        run_at = time(Some(job.run_at)),
        created = time(Some(job.created_at)),
        finished = time(job.finished_at),
        unique = esc(job.unique_key.as_deref().unwrap_or("—")),
        retry = button(&format!("/dashboard/jobs/{id}/retry"), "Retry", "primary"),
        discard = button(
            &format!("/dashboard/jobs/{id}/discard"),
            "Discard",
            "danger"
        ),
        cancel = button(&format!("/dashboard/jobs/{id}/cancel"), "Cancel", "danger"),
        payload = esc(serde_json::to_string_pretty(&job.payload).unwrap_or_default()),
    );
    for attempt in &job.attempts {
        let _ = write!(
            body,
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="error">{}</td></tr>"#,
            attempt.attempt,
            esc(attempt.worker.as_deref().unwrap_or("—")),
            time(attempt.started_at),
            time(attempt.finished_at),
            took(attempt.started_at, attempt.finished_at),
            esc(attempt.error.as_deref().unwrap_or("")),
        );
    }
    body.push_str("</table>");
    Ok(Html(layout(&format!("Job {id}"), &who(&caller), &body)))
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
}

impl Done {
    /// The message after an action (only the actions there are: nothing from the URL is shown
    /// but a number).
    fn notice(&self) -> String {
        let verb = match self.done.as_str() {
            "retry" => "retried",
            "discard" => "discarded",
            "cancel" => "cancelled",
            _ => return String::new(),
        };
        let what = match self.n {
            Some(n) => format!("{verb} {n} job(s)"),
            None => format!("{verb}: done"),
        };
        format!(r#"<p class="notice" id="notice">{}</p>"#, esc(what))
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
        let matching = state
            .store
            .jobs_list(&JobFilter {
                limit: Some(10_001),
                ..scope
            })
            .await?
            .len();
        let count = if matching > 10_000 {
            "more than 10,000".to_string()
        } else {
            matching.to_string()
        };
        let body = format!(
            r#"<p id="confirm-what">{label} {count} dead job(s) matching queue “{q}”, kind “{k}”, tenant “{t}” (empty: any)?</p>
<form method="post" action="/dashboard/dead/{action}" class="inline">
<input type="hidden" name="queue" value="{q}"><input type="hidden" name="kind" value="{k}"><input type="hidden" name="tenant" value="{t}"><input type="hidden" name="confirmed" value="yes">
<button type="submit" class="primary" id="confirm-{action}">{label} them</button></form> <a href="/dashboard/dead" id="cancel">Cancel</a>"#,
            q = esc(&form.queue),
            k = esc(&form.kind),
            t = esc(&form.tenant),
        );
        return Ok(
            Html(layout(&format!("{label} dead jobs?"), &who(&caller), &body)).into_response(),
        );
    }
    let n = api_jobs::act_on_dead(&state, &caller, filter, &action).await?;
    Ok(Redirect::to(&format!("/dashboard/dead?done={}&n={n}", url(&action))).into_response())
}
