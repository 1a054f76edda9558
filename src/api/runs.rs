//! Workflow runs: start one (idempotently, with a key), read one with its steps, list them,
//! retry a failed run from its failed step, cancel one, send one a signal.

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, JsonBody, QueryArgs};
use crate::store::runs::{RunId, RunRecord, RunState};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

/// The body of `POST /api/runs`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    /// A workflow of `workflows/` (`module_provision`, `data_retention`, …).
    pub workflow: String,
    /// The run's parameters (a JSON object); the workflow's defaults fill what is missing.
    #[serde(default)]
    #[schema(value_type = Option<std::collections::HashMap<String, Value>>)]
    pub params: Option<Value>,
    /// Starting again with the same key returns the first run and starts nothing.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// Filters of `GET /api/runs`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// queued, running, compensating, completed, failed or cancelled.
    pub state: Option<String>,
    /// 1..=500, default 50.
    pub limit: Option<i64>,
}

/// The tenant a run works for, when its parameters name one.
pub(crate) fn tenant_of(run: &RunRecord) -> Option<i64> {
    run.params.get("tenant_id").and_then(Value::as_i64)
}

pub(crate) fn run_id(raw: &str) -> Result<RunId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::bad_request(format!("`{raw}` is not a run id")))
}

pub(crate) async fn load(state: &AppState, id: RunId) -> Result<RunRecord, ApiError> {
    state
        .store
        .run_get(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no run {id}")))
}

/// Start a workflow run: only one whose definition names the caller's role in `started_by`,
/// with parameters of their declared types (provisioning, upgrade, archive, purge and
/// deprecation are started only by their operations, through the module and catalog
/// endpoints). A key is the caller's own: it never matches a run steward started itself.
#[utoipa::path(post, path = "/api/runs", tag = "runs", request_body = StartRun,
    responses((status = 201, body = RunStarted, description = "started"), (status = 200, body = RunStarted, description = "the run of this idempotency key"),
              (status = 400, body = super::error::ErrorBody), (status = 403, body = super::error::ErrorBody),
              (status = 404, body = super::error::ErrorBody)))]
pub(super) async fn start(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<StartRun>,
) -> Result<(StatusCode, Json<RunStarted>), ApiError> {
    let params = body.params.unwrap_or_else(|| json!({}));
    if !params.is_object() {
        return Err(ApiError::bad_request("params must be a JSON object"));
    }
    if let Some(key) = &body.idempotency_key
        && (key.is_empty() || key.len() > 200)
    {
        return Err(ApiError::bad_request(
            "idempotency_key must be 1 to 200 characters",
        ));
    }
    let (run, created) = state
        .operator
        .start_run(
            &body.workflow,
            params,
            body.idempotency_key,
            &caller.actor(),
        )
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(RunStarted { run, created })))
}

/// `POST /api/runs`: the run started, or the one the idempotency key already names.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RunStarted {
    pub run: RunId,
    /// False when the key named an existing run.
    pub created: bool,
}

/// `GET /api/runs`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RunList {
    pub runs: Vec<RunRecord>,
}

/// `POST /api/runs/{id}/{action}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RunAction {
    pub run: RunId,
    pub action: String,
}

/// Runs, newest first.
#[utoipa::path(get, path = "/api/runs", tag = "runs", params(RunsQuery),
    responses((status = 200, body = RunList, description = "runs"), (status = 400, body = super::error::ErrorBody)))]
pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryArgs(query): QueryArgs<RunsQuery>,
) -> Result<Json<RunList>, ApiError> {
    let run_state = query
        .state
        .as_deref()
        .map(|s| s.parse::<RunState>().map_err(ApiError::bad_request))
        .transpose()?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 500"));
    }
    // A tenant admin's page holds its own tenant's runs (asked of the store, so a page is
    // full whenever there are more); the check after it is the rule itself.
    let runs: Vec<RunRecord> = state
        .store
        .runs_page(&crate::store::runs::RunPage {
            state: run_state,
            tenant: caller.confined_to(),
            limit,
            ..Default::default()
        })
        .await?
        .into_iter()
        .filter(|run| caller.may_read(tenant_of(run)).is_ok())
        .collect();
    Ok(Json(RunList { runs }))
}

/// One run with its steps.
#[utoipa::path(get, path = "/api/runs/{id}", tag = "runs", params(("id" = i64, Path, description = "run id")),
    responses((status = 200, body = RunRecord, description = "the run"), (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
pub(super) async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RunRecord>, ApiError> {
    let run = load(&state, run_id(&id)?).await?;
    caller.may_read(tenant_of(&run))?;
    Ok(Json(run))
}

/// Retry a failed run from its failed step, or cancel a run.
#[utoipa::path(post, path = "/api/runs/{id}/{action}", tag = "runs",
    params(("id" = i64, Path, description = "run id"), ("action" = String, Path, description = "retry or cancel")),
    responses((status = 200, body = RunAction, description = "done"), (status = 400, body = super::error::ErrorBody),
              (status = 403, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
              (status = 409, body = super::error::ErrorBody)))]
pub(super) async fn act(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<RunAction>, ApiError> {
    let id = act_on(&state, &caller, &id, &action).await?;
    Ok(Json(RunAction { run: id, action }))
}

/// Retry (from its failed step) or cancel the run `raw_id` for `caller`: the API's and the
/// dashboard's one way.
pub(crate) async fn act_on(
    state: &AppState,
    caller: &Caller,
    raw_id: &str,
    action: &str,
) -> Result<RunId, ApiError> {
    let id = run_id(raw_id)?;
    let run = load(state, id).await?;
    caller.may_operate(tenant_of(&run))?;
    match action {
        "retry" => state.operator.retry_run(id, &caller.actor()).await?,
        "cancel" => state.operator.cancel_run(id, &caller.actor()).await?,
        other => {
            return Err(ApiError::not_found(format!(
                "no action `{other}`; retry or cancel"
            )));
        }
    }
    Ok(id)
}

/// The body of `POST /api/runs/{id}/signal/{name}`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendSignal {
    /// What the waiting step receives (its output); `null` when absent.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub payload: Option<Value>,
}

/// A signal that was sent.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SignalSent {
    pub run: RunId,
    pub signal: String,
}

/// Send a run a signal its workflow declares, as a role the declaration names (a step
/// waiting for it completes at once; one sent before the step is reached waits for it).
/// Sent once: again is a 409.
#[utoipa::path(post, path = "/api/runs/{id}/signal/{name}", tag = "runs", request_body = SendSignal,
    params(("id" = i64, Path, description = "run id"), ("name" = String, Path, description = "signal name")),
    responses((status = 202, body = SignalSent, description = "recorded; a waiting step resumes"),
              (status = 400, body = super::error::ErrorBody), (status = 403, body = super::error::ErrorBody),
              (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
pub(super) async fn signal(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<SendSignal>,
) -> Result<(StatusCode, Json<SignalSent>), ApiError> {
    let id = run_id(&id)?;
    let run = load(&state, id).await?;
    caller.may_read(tenant_of(&run))?;
    let payload = body.payload.unwrap_or(Value::Null);
    state
        .engine
        .signal(
            id,
            &name,
            &payload,
            &caller.actor().name,
            Some(caller.role_name()),
        )
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(SignalSent {
            run: id,
            signal: name,
        }),
    ))
}
