//! The HTTP server: the API's routes ([`crate::api`]) and the dashboard's
//! ([`crate::dashboard`]) in one app, with the JSON fallbacks and the request span of every
//! request. It sits above both, so neither imports the other's layer.

use crate::api::{self, AppState};
use axum::Router;

/// The whole HTTP app over `state`.
pub fn app(state: AppState) -> Router {
    api::with_fallbacks(api::routes().merge(crate::dashboard::routes()))
        .layer(axum::middleware::from_fn(api::observe))
        .with_state(state)
}

/// Serve the app on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}
