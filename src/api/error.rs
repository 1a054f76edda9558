//! API errors: JSON `{"code": "...", "message": "..."}` with a stable code and a 4xx status
//! for everything a caller did wrong. A database that cannot be reached is a 503, anything
//! else a 500; neither body carries the database's text, which is logged with the request's
//! `trace_id` instead.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, machine-readable (`unauthenticated`, `forbidden`, `not_found`, …).
    pub code: &'static str,
    pub message: String,
}

/// The body of every error response (for the OpenAPI document).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable and machine-readable: `invalid_input`, `unauthenticated`, `forbidden`,
    /// `not_found`, `conflict`, `not_applicable`, a domain rule's code, …
    pub code: String,
    /// For people.
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_input", message)
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError::*;
        match e {
            InvalidInput(why) => Self::bad_request(why),
            Conflict(why) => Self::new(StatusCode::CONFLICT, "conflict", why),
            Stale(why) => Self::new(StatusCode::CONFLICT, "stale", why),
            Domain(rule) => rule.into(),
            ref other if other.is_bad_value() => Self::bad_request(
                "a value was refused: text must be valid UTF-8 without NUL characters, \
                 numbers and dates well formed and in range",
            ),
            ref other if other.is_unique_violation() => {
                Self::new(StatusCode::CONFLICT, "conflict", "it already exists")
            }
            ref other if other.is_transient() => {
                tracing::warn!(error = %other, "database unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database is unavailable: try again",
                )
            }
            other => {
                tracing::error!(error = %other, "request failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the request failed; the log holds the detail under this request's trace id \
                     (the x-trace-id header)",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            code: self.code,
            message: &self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<crate::domain::DomainError> for ApiError {
    fn from(rule: crate::domain::DomainError) -> Self {
        use crate::domain::DomainError::*;
        let status = match rule {
            NotPermitted { .. } => StatusCode::FORBIDDEN,
            HasDependants { .. } => StatusCode::CONFLICT,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Self::new(status, rule.code(), rule.to_string())
    }
}

impl From<crate::workflow::EngineError> for ApiError {
    fn from(e: crate::workflow::EngineError) -> Self {
        use crate::workflow::EngineError::*;
        match e {
            UnknownWorkflow(_) | NoRun(_) => Self::not_found(e.to_string()),
            InvalidParams { .. } => Self::bad_request(e.to_string()),
            NotRetryable { .. } | NotCancellable { .. } | Signal(_) => {
                Self::new(StatusCode::CONFLICT, "not_applicable", e.to_string())
            }
            SignalRefused(_) => Self::new(StatusCode::FORBIDDEN, "forbidden", e.to_string()),
            Store(err) => err.into(),
        }
    }
}

impl From<crate::lifecycle::LifecycleError> for ApiError {
    fn from(e: crate::lifecycle::LifecycleError) -> Self {
        use crate::lifecycle::LifecycleError::*;
        match e {
            NoTenant(_) | NoModule(_) | NoVersion(_) | NoTenantModule(..) | NoJob(_) => {
                Self::not_found(e.to_string())
            }
            NothingDone(why) => Self::new(StatusCode::CONFLICT, "not_applicable", why),
            Domain(rule) => rule.into(),
            Store(err) => err.into(),
            Engine(err) => err.into(),
            NoWorkflow(_) | Export(_) => {
                // Storage paths and endpoints stay in the log, under the request's trace id.
                tracing::warn!(error = %e, "operation unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "a service this operation needs is unavailable: try again (the log holds \
                     the detail under this request's trace id, the x-trace-id header)",
                )
            }
        }
    }
}

/// A JSON body extractor whose rejection is an [`ApiError`] (400 `invalid_input`, with
/// serde's message naming the field). A NUL character in any string or key of the body is
/// refused the same way: a database refuses it in text, so it never gets that far.
pub struct JsonBody<T>(pub T);

/// Does any string or key of `value` hold a NUL character?
fn holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(text) => text.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(fields) => fields
            .iter()
            .any(|(key, value)| key.contains('\0') || holds_nul(value)),
        _ => false,
    }
}

impl<S, T> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match <Json<serde_json::Value> as axum::extract::FromRequest<S>>::from_request(req, state)
            .await
        {
            Ok(Json(value)) if holds_nul(&value) => Err(ApiError::bad_request(
                "NUL characters are not accepted in text",
            )),
            Ok(Json(value)) => serde_json::from_value(value).map(Self).map_err(|e| {
                ApiError::bad_request(format!(
                    "Failed to deserialize the JSON body into the target type: {e}"
                ))
            }),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!(
                        "the body is larger than {} bytes",
                        crate::http::guard::BODY_LIMIT
                    ),
                ))
            }
            Err(rejection) => Err(ApiError::bad_request(rejection.body_text())),
        }
    }
}

/// A query-string extractor whose rejection is an [`ApiError`].
pub struct QueryArgs<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for QueryArgs<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match <axum::extract::Query<T> as axum::extract::FromRequestParts<S>>::from_request_parts(
            parts, state,
        )
        .await
        {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::bad_request(rejection.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ApiError;
    use crate::store::StoreError;
    use axum::http::StatusCode;

    /// A real failure answers a generic 5xx: what went wrong (a table, a column, a value)
    /// stays in the log, under the request's trace id; a transient one says to retry.
    #[test]
    fn server_failures_answer_a_generic_body() {
        let failed = ApiError::from(StoreError::Corrupt("column secret_token of row 42".into()));
        assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(failed.code, "internal");
        assert!(
            !failed.message.contains("secret_token"),
            "{}",
            failed.message
        );
        assert!(failed.message.contains("trace id"), "{}", failed.message);
        let down = ApiError::from(StoreError::Database(sqlx::Error::PoolTimedOut));
        assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(down.code, "unavailable");
        assert!(!down.message.contains("pool"), "{}", down.message);
    }
}
