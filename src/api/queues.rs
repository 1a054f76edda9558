//! Queues and worker processes: what each queue holds, pause and resume (see
//! [`crate::queue::control`]), the live workers.

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody, QueryArgs};
use crate::queue::control::{self, ControlReport};
use crate::queue::summary::{self, QueueSummary};
use crate::store::control::{QueueState, WorkerRecord};
use crate::store::limits::BreakerRecord;
use crate::types::MinuteCount;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `GET /api/queues`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueueList {
    pub queues: Vec<QueueSummary>,
}

/// `GET /api/queues/{queue}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueueDetail {
    #[serde(flatten)]
    pub summary: QueueSummary,
    /// Who paused or resumed it last, if anyone ever did.
    pub control: Option<QueueState>,
    /// Jobs completed and failed per minute over the last hour (minutes without any left out).
    pub per_minute: Vec<MinuteCount>,
    /// The live worker processes that work it.
    pub workers: Vec<WorkerRecord>,
    /// The circuit breakers of its kinds that have seen a failure.
    pub breakers: Vec<BreakerRecord>,
}

/// `GET /api/breakers`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BreakerList {
    pub breakers: Vec<BreakerRecord>,
}

/// `GET /api/workers`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkerList {
    pub workers: Vec<WorkerRecord>,
}

/// Options of a pause or resume.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ControlQuery {
    /// How long to wait for every live worker to apply it, 0..=60000 ms (default 15000).
    pub wait_ms: Option<u64>,
}

/// Every queue: jobs per state, latency, paused or not, workers and concurrency.
#[utoipa::path(get, path = "/api/queues", tag = "queues",
    responses((status = 200, body = QueueList), (status = 403, body = ErrorBody)))]
pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<QueueList>, ApiError> {
    caller.may_read_deployment()?;
    Ok(Json(QueueList {
        queues: summary::summaries(&state.store).await?,
    }))
}

/// One queue, with its throughput and failures per minute and its workers.
#[utoipa::path(get, path = "/api/queues/{queue}", tag = "queues",
    params(("queue" = String, Path, description = "queue name")),
    responses((status = 200, body = QueueDetail), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
pub(super) async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(queue): Path<String>,
) -> Result<Json<QueueDetail>, ApiError> {
    caller.may_read_deployment()?;
    Ok(Json(detail(&state, &queue).await?))
}

/// A queue's page, as the API and the dashboard show it.
pub(crate) async fn detail(state: &AppState, queue: &str) -> Result<QueueDetail, ApiError> {
    if !crate::kinds::valid_name(queue) {
        return Err(ApiError::bad_request(format!(
            "queue `{queue}` must be 1-64 of a-z, 0-9, _ and -, starting with a letter"
        )));
    }
    let workers = state.store.workers_list().await?;
    let prefixes: Vec<String> = state
        .engine
        .kinds()
        .iter()
        .filter(|k| k.queue == queue)
        .filter_map(|k| k.limits.breaker.as_ref())
        .map(|b| format!("breaker:{}:", b.name))
        .collect();
    let breakers = state
        .store
        .breakers_list()
        .await?
        .into_iter()
        .filter(|b| prefixes.iter().any(|p| b.key.starts_with(p)))
        .collect();
    Ok(QueueDetail {
        breakers,
        summary: summary::summary(&state.store, queue).await?,
        control: state
            .store
            .queue_states()
            .await?
            .into_iter()
            .find(|s| s.queue == queue),
        per_minute: state.store.jobs_per_minute(Some(queue), 60).await?,
        workers: summary::working(&workers, queue),
    })
}

/// Every circuit breaker that has seen a failure: closed, open (its jobs wait, using no
/// attempt) or half-open (one probe may pass).
#[utoipa::path(get, path = "/api/breakers", tag = "queues",
    responses((status = 200, body = BreakerList), (status = 403, body = ErrorBody)))]
pub(super) async fn breakers(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<BreakerList>, ApiError> {
    caller.may_read_deployment()?;
    Ok(Json(BreakerList {
        breakers: state.store.breakers_list().await?,
    }))
}

/// Pause or resume a queue. A pause returns once every live worker process has applied it
/// (200): from then on no job of the queue starts on any node, and jobs already fetched are
/// released without using an attempt. 202 when some had not applied it within `wait_ms`
/// (they are listed in `pending`).
#[utoipa::path(post, path = "/api/queues/{queue}/{action}", tag = "queues",
    params(("queue" = String, Path, description = "queue name"),
           ("action" = String, Path, description = "pause or resume"), ControlQuery),
    responses((status = 200, body = ControlReport, description = "applied by every live worker"),
              (status = 202, body = ControlReport, description = "recorded; some workers have not applied it yet"),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(super) async fn act(
    State(state): State<AppState>,
    caller: Caller,
    Path((queue, action)): Path<(String, String)>,
    QueryArgs(query): QueryArgs<ControlQuery>,
) -> Result<(StatusCode, Json<ControlReport>), ApiError> {
    let wait = match query.wait_ms {
        None => control::DEFAULT_WAIT,
        Some(ms @ 0..=60_000) => Duration::from_millis(ms),
        Some(_) => return Err(ApiError::bad_request("wait_ms must be between 0 and 60000")),
    };
    let report = set_paused(&state, &caller, &queue, &action, wait).await?;
    let status = if report.acknowledged() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(report)))
}

/// Pause or resume for `caller` (the API's and the dashboard's one way): master admins only.
pub(crate) async fn set_paused(
    state: &AppState,
    caller: &Caller,
    queue: &str,
    action: &str,
    wait: Duration,
) -> Result<ControlReport, ApiError> {
    caller.may_administer()?;
    let paused = match action {
        "pause" => true,
        "resume" => false,
        other => return Err(ApiError::not_found(format!("no queue action `{other}`"))),
    };
    let by = format!("api:{}", caller.0.sub);
    Ok(control::set_paused(&state.store, queue, paused, &by, wait).await?)
}

/// The live and recently gone worker processes: their queues, jobs in hand, last beat.
#[utoipa::path(get, path = "/api/workers", tag = "queues",
    responses((status = 200, body = WorkerList), (status = 403, body = ErrorBody)))]
pub(super) async fn workers(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<WorkerList>, ApiError> {
    caller.may_read_deployment()?;
    Ok(Json(WorkerList {
        workers: state.store.workers_list().await?,
    }))
}
