//! Jobs: list with filters and paging, one job with its attempts, and the operators' retry,
//! discard and cancel.

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use crate::types::{JobFilter, JobId, JobRecord, JobState};
use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

/// Filters of `GET /api/jobs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub state: Option<String>,
    pub queue: Option<String>,
    pub kind: Option<String>,
    pub tenant: Option<String>,
    /// Keyset paging: only jobs with a greater id.
    pub after_id: Option<JobId>,
    /// 1..=1000, default 100.
    pub limit: Option<i64>,
}

fn tenant_of(job: &JobRecord) -> Option<i64> {
    job.tenant.parse().ok()
}

pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
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
    let tenant = match (caller.confined_to(), query.tenant) {
        (Some(own), Some(asked)) if asked != own.to_string() => {
            return Err(ApiError::forbidden("this belongs to another tenant"));
        }
        (Some(own), _) => Some(own.to_string()),
        (None, asked) => asked,
    };
    let jobs = state
        .store
        .jobs_list(&JobFilter {
            ids: Vec::new(),
            state: job_state,
            queue: query.queue,
            kind: query.kind,
            tenant,
            after_id: query.after_id,
            limit: Some(limit),
        })
        .await?;
    let next = if jobs.len() as i64 == limit {
        jobs.last().map(|j| j.id)
    } else {
        None
    };
    Ok(Json(json!({"jobs": jobs, "next_after_id": next})))
}

async fn load(state: &AppState, id: JobId) -> Result<JobRecord, ApiError> {
    state
        .store
        .job_get(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))
}

fn job_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::bad_request(format!("`{raw}` is not a job id")))
}

pub(super) async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobRecord>, ApiError> {
    let job = load(&state, job_id(&id)?).await?;
    caller.may_read(tenant_of(&job))?;
    Ok(Json(job))
}

pub(super) async fn act(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let id = job_id(&id)?;
    let job = load(&state, id).await?;
    caller.may_operate(tenant_of(&job))?;
    let filter = JobFilter {
        ids: vec![id],
        ..Default::default()
    };
    let affected = match action.as_str() {
        "retry" => state.store.jobs_retry(&filter).await?,
        "discard" => state.store.jobs_discard(&filter).await?,
        "cancel" => state.store.jobs_cancel(&filter).await?,
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
    Ok(Json(
        json!({"job": id, "action": action, "affected": affected.count}),
    ))
}
