//! `POST /api/jobs`: the platform enqueues jobs over HTTP, one or a batch of up to 1,000, of
//! the kinds whose definition names the caller's role in `enqueued_by` (the kinds steward
//! enqueues itself, workflow steps and webhook deliveries, can name none: a caller could forge
//! a step or a signed webhook). A payload goes through its kind's declared fields, the same
//! check the Rust client makes ([`crate::Client::build`]); a unique key another live job holds
//! gives that job back (`inserted: false`), and a call that inserted nothing answers 200
//! instead of 201.

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody, JsonBody};
use crate::types::Enqueued;
use crate::{ClientError, EnqueueOptions};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most jobs one call enqueues.
pub const BATCH_LIMIT: usize = 1000;

/// One job to enqueue; what it leaves out comes from its kind's definition.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueJob {
    /// A kind declared in `jobs/*.toml` whose `enqueued_by` names the caller's role.
    pub kind: String,
    /// The job's arguments: an object, checked against the kind's declared `[payload]`.
    #[schema(value_type = Option<Object>)]
    pub payload: Option<Value>,
    /// Another queue than the kind's.
    pub queue: Option<String>,
    /// Lower runs first (default: the kind's).
    pub priority: Option<i16>,
    /// The tenant the job works for (a tenant admin's own, whatever it asks).
    pub tenant: Option<String>,
    /// Not before this time (RFC 3339).
    pub run_at: Option<DateTime<Utc>>,
    /// At most one live job holds a key (default: the kind's `unique` template, if any).
    pub unique_key: Option<String>,
}

/// A batch of jobs.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueBatch {
    /// 1 to 1,000 jobs, enqueued in one statement (all or none).
    pub jobs: Vec<EnqueueJob>,
}

/// The body of `POST /api/jobs`: one job, or `{"jobs": [...]}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum EnqueueBody {
    Batch(EnqueueBatch),
    One(EnqueueJob),
}

/// What `POST /api/jobs` did, job by job in the order given.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EnqueueAnswer {
    pub jobs: Vec<Enqueued>,
}

/// Enqueue one job or a batch.
#[utoipa::path(post, path = "/api/jobs", tag = "jobs", request_body = EnqueueBody,
    responses((status = 201, body = EnqueueAnswer, description = "enqueued (at least one job inserted)"),
              (status = 200, body = EnqueueAnswer, description = "every job's unique key was held: the existing jobs"),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn enqueue(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<EnqueueBody>,
) -> Result<(StatusCode, Json<EnqueueAnswer>), ApiError> {
    let jobs = match body {
        EnqueueBody::One(job) => vec![job],
        EnqueueBody::Batch(batch) => batch.jobs,
    };
    if jobs.is_empty() || jobs.len() > BATCH_LIMIT {
        return Err(ApiError::bad_request(format!(
            "a batch holds 1 to {BATCH_LIMIT} jobs, not {}",
            jobs.len()
        )));
    }
    let role = caller.role_name();
    let mut new_jobs = Vec::with_capacity(jobs.len());
    for (i, job) in jobs.into_iter().enumerate() {
        let at = |message: String| format!("job {i}: {message}");
        let kind = state
            .client
            .kinds()
            .get(&job.kind)
            .ok_or_else(|| ApiError::not_found(at(format!("no job kind `{}`", job.kind))))?;
        if !kind.enqueued_by.iter().any(|r| r == role) {
            return Err(ApiError::forbidden(at(format!(
                "a {role} may not enqueue `{}` jobs (its definition's enqueued_by: {})",
                job.kind,
                if kind.enqueued_by.is_empty() {
                    "none".to_string()
                } else {
                    kind.enqueued_by.join(", ")
                }
            ))));
        }
        if let Some(queue) = &job.queue
            && !crate::kinds::valid_name(queue)
        {
            return Err(ApiError::bad_request(at(format!(
                "queue `{queue}` must be 1-64 of a-z, 0-9, _ and -, starting with a letter"
            ))));
        }
        let options = EnqueueOptions {
            queue: job.queue,
            priority: job.priority,
            tenant: caller.scope_tenant(job.tenant)?,
            run_at: job.run_at,
            unique_key: job.unique_key,
            ..EnqueueOptions::default()
        };
        let payload = job
            .payload
            .unwrap_or_else(|| Value::Object(Default::default()));
        let new_job = state
            .client
            .build(&job.kind, payload, options)
            .map_err(|e| match e {
                ClientError::InvalidPayload { .. } => ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_payload",
                    at(e.to_string()),
                ),
                other => ApiError::bad_request(at(other.to_string())),
            })?;
        new_jobs.push(new_job);
    }
    let enqueued = state.store.jobs_insert_many(&new_jobs).await?;
    let status = if enqueued.iter().any(|e| e.inserted) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(EnqueueAnswer { jobs: enqueued })))
}
