//! `POST /api/tenant/{id}/modules/{module}/usage`: the platform records what a tenant's module
//! used (seed 000 §2: route, tokens, estimated cost, latency, rows), one entry or a batch; the
//! monthly cost aggregation reads them. Usage feeds billing: only service tokens and master
//! admins write it, never a tenant admin (not even its own tenant's).

use super::AppState;
use super::auth::{Caller, Role};
use super::error::{ApiError, ErrorBody, JsonBody};
use crate::store::data::UsageEntry;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Most entries one call records.
pub const BATCH_LIMIT: usize = 1000;

/// One use of a tenant's module.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageRecord {
    /// What was called (an API route, a job, a screen).
    pub route: String,
    #[serde(default)]
    pub tokens: i64,
    /// Rows read or written.
    #[serde(default)]
    pub row_count: i64,
    /// A decimal string with at most 6 decimal places (`"0.0042"`), not negative.
    #[schema(value_type = String)]
    pub estimated_cost: Decimal,
    #[serde(default)]
    pub latency_ms: i32,
    /// When it happened (default: now); not in the future.
    pub at: Option<DateTime<Utc>>,
}

/// A batch of usage entries.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageBatch {
    /// 1 to 1,000 entries, recorded in one transaction.
    pub entries: Vec<UsageRecord>,
}

/// The body of the usage route: one entry, or `{"entries": [...]}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum UsageBody {
    Batch(UsageBatch),
    One(UsageRecord),
}

/// How many entries were recorded.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageRecorded {
    pub tenant_id: i64,
    pub module: String,
    pub recorded: u64,
}

/// Record usage of a tenant's module.
#[utoipa::path(post, path = "/api/tenant/{id}/modules/{module}/usage", tag = "modules",
    request_body = UsageBody,
    params(("id" = i64, Path, description = "tenant id"), ("module" = String, Path, description = "module slug")),
    responses((status = 201, body = UsageRecorded, description = "recorded"),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(super) async fn record(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, module)): Path<(String, String)>,
    JsonBody(body): JsonBody<UsageBody>,
) -> Result<(StatusCode, Json<UsageRecorded>), ApiError> {
    let id = super::modules::tenant_id(&id)?;
    if !matches!(caller.0.role, Role::MasterAdmin | Role::Service) {
        return Err(ApiError::forbidden(
            "usage feeds billing: only the platform (a service token) or a master_admin records it",
        ));
    }
    let records = match body {
        UsageBody::One(record) => vec![record],
        UsageBody::Batch(batch) => batch.entries,
    };
    if records.is_empty() || records.len() > BATCH_LIMIT {
        return Err(ApiError::bad_request(format!(
            "a batch holds 1 to {BATCH_LIMIT} entries, not {}",
            records.len()
        )));
    }
    if state.store.tenant_module_get(id, &module).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "tenant {id} has no module `{module}`"
        )));
    }
    let now = Utc::now();
    let mut entries = Vec::with_capacity(records.len());
    for (i, r) in records.into_iter().enumerate() {
        let entry = UsageEntry {
            tenant_id: id,
            module: module.clone(),
            route: r.route,
            tokens: r.tokens,
            row_count: r.row_count,
            estimated_cost: r.estimated_cost,
            latency_ms: r.latency_ms,
            at: r.at.unwrap_or(now),
        };
        let bad = |why: String| ApiError::bad_request(format!("entry {i}: {why}"));
        crate::store::data::check_usage(&entry).map_err(|e| bad(e.to_string()))?;
        if entry.at > now + chrono::Duration::minutes(5) {
            return Err(bad("`at` is in the future".into()));
        }
        entries.push(entry);
    }
    let recorded = state.store.usage_record(&entries).await?;
    Ok((
        StatusCode::CREATED,
        Json(UsageRecorded {
            tenant_id: id,
            module,
            recorded,
        }),
    ))
}
