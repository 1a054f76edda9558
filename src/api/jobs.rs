//! Jobs: list with filters and paging, one job with its attempts, and the operators' retry,
//! discard and cancel.

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, JsonBody, QueryArgs};
use crate::types::{JobFilter, JobId, JobRecord, JobState};
use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;

/// Filters of `GET /api/jobs`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// scheduled, available, running, completed, retryable, dead or cancelled.
    pub state: Option<String>,
    pub queue: Option<String>,
    pub kind: Option<String>,
    pub tenant: Option<String>,
    /// Keyset paging: only jobs with a greater id.
    #[param(value_type = Option<i64>)]
    pub after_id: Option<JobId>,
    /// Keyset paging: only jobs with a smaller id.
    #[param(value_type = Option<i64>)]
    pub before_id: Option<JobId>,
    /// Only jobs created at or after this time (RFC 3339).
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only jobs created before this time (RFC 3339).
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Only jobs whose payload or errors contain this text (case-insensitive, 1-200
    /// characters). A text search reads every job in its time range: without `since`, it
    /// covers the last 24 hours ([`TEXT_SEARCH_DEFAULT_HOURS`]).
    pub q: Option<String>,
    /// `oldest` (default) or `newest` first.
    pub order: Option<String>,
    /// 1..=1000, default 100.
    pub limit: Option<i64>,
}

pub(crate) fn tenant_of(job: &JobRecord) -> Option<i64> {
    job.tenant.parse().ok()
}

/// Jobs by state, queue, kind and tenant, oldest first, a page at a time.
#[utoipa::path(get, path = "/api/jobs", tag = "jobs", params(ListQuery),
    responses((status = 200, body = JobPage, description = "a page of jobs, the total and the next page's cursor"),
              (status = 400, body = super::error::ErrorBody), (status = 403, body = super::error::ErrorBody)))]
pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryArgs(query): QueryArgs<ListQuery>,
) -> Result<Json<JobPage>, ApiError> {
    let job_state = query
        .state
        .as_deref()
        .map(|s| {
            s.parse::<JobState>()
                .map_err(|_| ApiError::bad_request(format!("unknown job state `{s}`")))
        })
        .transpose()?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let newest_first = match query.order.as_deref() {
        None | Some("oldest") => false,
        Some("newest") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "order must be `oldest` or `newest`, got `{other}`"
            )));
        }
    };
    if query.q.as_ref().is_some_and(|q| q.chars().count() > 200) {
        return Err(ApiError::bad_request("q must be at most 200 characters"));
    }
    let tenant = caller.scope_tenant(query.tenant)?;
    let filter = JobFilter {
        state: job_state,
        queue: query.queue,
        kind: query.kind,
        tenant,
        after_id: query.after_id,
        before_id: query.before_id,
        since: text_search_since(query.since, query.q.as_deref()),
        until: query.until,
        text: query.q.filter(|q| !q.is_empty()),
        newest_first,
        limit: Some(limit),
        ..JobFilter::default()
    };
    let jobs = state.store.jobs_list(&filter).await?;
    let total = state.store.jobs_count(&filter, COUNT_CAP).await?;
    let next = if jobs.len() as i64 == limit {
        jobs.last().map(|j| j.id)
    } else {
        None
    };
    Ok(Json(JobPage {
        jobs,
        total: total.min(COUNT_CAP - 1),
        total_is_lower_bound: total >= COUNT_CAP,
        next_after_id: if newest_first { None } else { next },
        next_before_id: if newest_first { next } else { None },
    }))
}

/// Totals are counted up to this (a larger total is shown as "more than").
pub(crate) const COUNT_CAP: i64 = 10_001;

/// A page of `GET /api/jobs`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct JobPage {
    pub jobs: Vec<JobRecord>,
    /// How many jobs match (paging aside), counted up to 10,000.
    pub total: i64,
    /// More than `total` match.
    pub total_is_lower_bound: bool,
    /// Oldest first: the `after_id` of the next page (none on the last).
    pub next_after_id: Option<JobId>,
    /// Newest first: the `before_id` of the next (older) page (none on the last).
    pub next_before_id: Option<JobId>,
}

pub(crate) async fn load(state: &AppState, id: JobId) -> Result<JobRecord, ApiError> {
    state
        .store
        .job_get(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))
}

pub(crate) fn job_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::bad_request(format!("`{raw}` is not a job id")))
}

/// One job with every attempt.
#[utoipa::path(get, path = "/api/jobs/{id}", tag = "jobs", params(("id" = i64, Path, description = "job id")),
    responses((status = 200, body = JobRecord, description = "the job"), (status = 400, body = super::error::ErrorBody),
              (status = 404, body = super::error::ErrorBody)))]
pub(super) async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobRecord>, ApiError> {
    let job = load(&state, job_id(&id)?).await?;
    caller.may_read(tenant_of(&job))?;
    Ok(Json(job))
}

/// Retry, discard or cancel one job.
#[utoipa::path(post, path = "/api/jobs/{id}/{action}", tag = "jobs",
    params(("id" = i64, Path, description = "job id"), ("action" = String, Path, description = "retry, discard or cancel")),
    responses((status = 200, body = JobAction, description = "done"), (status = 400, body = super::error::ErrorBody),
              (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
pub(super) async fn act(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<JobAction>, ApiError> {
    let (id, affected) = act_on(&state, &caller, &id, &action).await?;
    Ok(Json(JobAction {
        job: id,
        action,
        affected,
    }))
}

/// `POST /api/jobs/{id}/{action}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct JobAction {
    pub job: JobId,
    pub action: String,
    /// How many jobs it applied to (1).
    pub affected: u64,
}

/// `POST /api/dlq/{action}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct BulkAction {
    pub action: String,
    /// How many it applied to: dead jobs retried or discarded, and runs resumed for their
    /// dead step jobs.
    pub affected: u64,
    /// What matched but was left as it was, and why (a step job whose run may not be
    /// retried by this caller, …).
    pub refused: Vec<String>,
}

/// Retry, discard or cancel the job `raw_id` for `caller` (the API's and the dashboard's
/// one way): 404 for an unknown job or action, 403 for another tenant's job, 409 when the
/// job's state does not allow it.
pub(crate) async fn act_on(
    state: &AppState,
    caller: &Caller,
    raw_id: &str,
    action: &str,
) -> Result<(JobId, u64), ApiError> {
    let id = job_id(raw_id)?;
    let job = load(state, id).await?;
    caller.may_operate(tenant_of(&job))?;
    let filter = JobFilter {
        ids: vec![id],
        ..Default::default()
    };
    let affected = match action {
        "retry" => retry(state, caller, &filter).await?,
        "discard" => state.store.jobs_discard(&filter).await?,
        // A workflow step's job is cancelled through its run (the run's rules apply).
        "cancel" => crate::store::Affected {
            count: state.operator.cancel_jobs(&[id], &caller.actor()).await?,
        },
        other => {
            return Err(ApiError::not_found(format!(
                "no action `{other}`; retry, discard or cancel"
            )));
        }
    };
    if affected.count == 0 {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "not_applicable",
            format!("job {id} is {}: it cannot be {action}ed", job.state),
        ));
    }
    Ok((id, affected.count))
}

/// How far back a text search goes when its caller names no range: it reads every job in its
/// range (no index covers payload text), so an unbounded one would read the whole table.
pub const TEXT_SEARCH_DEFAULT_HOURS: i64 = 24;

/// The start of a search's range: `since`, else for a text search the default window.
pub(crate) fn text_search_since(
    since: Option<chrono::DateTime<chrono::Utc>>,
    text: Option<&str>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    match (since, text) {
        (Some(since), _) => Some(since),
        (None, Some(text)) if !text.is_empty() => {
            Some(chrono::Utc::now() - chrono::Duration::hours(TEXT_SEARCH_DEFAULT_HOURS))
        }
        _ => None,
    }
}

/// Which dead jobs a bulk retry or discard applies to (empty: every dead job).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadFilter {
    pub queue: Option<String>,
    pub kind: Option<String>,
    pub tenant: Option<String>,
    /// Only jobs whose payload or errors contain this text (case-insensitive).
    pub text: Option<String>,
    /// Only jobs created at or after this time (RFC 3339).
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

/// Retry or discard every dead job matching the filter (a tenant admin: only its own).
#[utoipa::path(post, path = "/api/dlq/{action}", tag = "jobs", request_body = DeadFilter,
    params(("action" = String, Path, description = "retry or discard")),
    responses((status = 200, body = BulkAction, description = "how many jobs"), (status = 400, body = super::error::ErrorBody),
              (status = 403, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
              (status = 409, body = super::error::ErrorBody)))]
pub(super) async fn bulk(
    State(state): State<AppState>,
    caller: Caller,
    Path(action): Path<String>,
    JsonBody(body): JsonBody<DeadFilter>,
) -> Result<Json<BulkAction>, ApiError> {
    let (affected, refused) = act_on_dead(&state, &caller, body, &action).await?;
    Ok(Json(BulkAction {
        action,
        affected,
        refused,
    }))
}

/// Retry or discard every dead job matching `filter` that `caller` may operate on (a tenant
/// admin: only its own tenant's); returns how many.
/// The dead jobs a bulk action by `caller` may touch: its filter, confined to the caller's
/// tenant, refused for a caller who may not operate on them (the one check the API's bulk
/// actions and the dashboard's confirmation page both make).
pub(crate) fn dead_scope(caller: &Caller, filter: DeadFilter) -> Result<JobFilter, ApiError> {
    let tenant = caller.scope_tenant(filter.tenant)?;
    caller.may_operate(tenant.as_deref().and_then(|t| t.parse().ok()))?;
    Ok(JobFilter {
        state: Some(JobState::Dead),
        queue: filter.queue,
        kind: filter.kind,
        tenant,
        text: filter.text.filter(|t| !t.is_empty()),
        since: filter.since,
        ..Default::default()
    })
}

/// How many it applied to, and what it left and why.
pub(crate) async fn act_on_dead(
    state: &AppState,
    caller: &Caller,
    filter: DeadFilter,
    action: &str,
) -> Result<(u64, Vec<String>), ApiError> {
    let filter = dead_scope(caller, filter)?;
    match action {
        "retry" => {
            let retried = state.operator.retry_jobs(&filter, &caller.actor()).await?;
            Ok((retried.count(), retried.refused))
        }
        "discard" => Ok((state.store.jobs_discard(&filter).await?.count, Vec::new())),
        other => Err(ApiError::not_found(format!(
            "no bulk action `{other}`; retry or discard"
        ))),
    }
}

/// Retry the jobs `filter` matches through the operations: a workflow step's dead job is
/// retried through its run (the lifecycle's rules); nothing retried is a 409.
async fn retry(
    state: &AppState,
    caller: &Caller,
    filter: &JobFilter,
) -> Result<crate::store::Affected, ApiError> {
    let retried = state.operator.retry_jobs(filter, &caller.actor()).await?;
    Ok(crate::store::Affected {
        count: retried.count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_search_without_a_range_covers_the_default_window_only() {
        let given = chrono::Utc::now() - chrono::Duration::days(90);
        assert_eq!(text_search_since(Some(given), Some("x")), Some(given));
        assert_eq!(text_search_since(None, None), None);
        assert_eq!(text_search_since(None, Some("")), None);
        let since = text_search_since(None, Some("order-42")).expect("bounded");
        let hours = (chrono::Utc::now() - since).num_minutes() as f64 / 60.0;
        assert!(
            (hours - TEXT_SEARCH_DEFAULT_HOURS as f64).abs() < 0.1,
            "{hours}"
        );
    }
}
