//! The HTTP API (axum): how the platform and operators reach steward (SPEC §5). Every route
//! but `/health` needs a bearer JWT ([`auth`]); every error is JSON with a stable code
//! ([`error`]).
//!
//! | route | who |
//! |---|---|
//! | `GET /health` | anyone: database and export storage reachable |
//! | `GET /api/jobs?state&queue&kind&tenant&after_id&limit` | readers (a tenant admin: its own jobs) |
//! | `GET /api/jobs/{id}` | readers |
//! | `POST /api/jobs/{id}/retry`, `/discard`, `/cancel` | operators |

pub mod auth;
pub mod error;
mod jobs;

use crate::export::SharedExports;
use crate::store::SharedStore;
use axum::Router;
use axum::routing::{get, post};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: SharedStore,
    pub exports: SharedExports,
    pub keys: auth::AuthKeys,
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/api/jobs", get(jobs::list))
        .route("/api/jobs/{id}", get(jobs::show))
        .route("/api/jobs/{id}/{action}", post(jobs::act))
        .fallback(|| async { error::ApiError::not_found("no such route") })
        .with_state(state)
}

async fn health(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
    let database = state.store.jobs_count_by_state().await.map(drop);
    let storage = state.exports.check().await;
    let ok = database.is_ok() && storage.is_ok();
    let status = if ok {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    let describe = |r: Result<(), String>| match r {
        Ok(()) => serde_json::json!("ok"),
        Err(e) => serde_json::json!(e),
    };
    (
        status,
        axum::Json(serde_json::json!({
            "status": if ok { "ok" } else { "degraded" },
            "database": describe(database.map_err(|e| e.to_string())),
            "storage": describe(storage.map_err(|e| e.to_string())),
        })),
    )
}

/// Serve the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
