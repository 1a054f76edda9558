//! The HTTP server: the API's routes ([`crate::api`]) and the dashboard's
//! ([`crate::dashboard`]) in one app, with the JSON fallbacks, the request span of every
//! request and the guards every response gets ([`guard`]: body limit, security headers, the
//! Origin check of cookie-authenticated writes). It sits above both, so neither imports the
//! other's layer. [`server`] accepts connections with the limits an exposed server needs.

pub mod guard;
pub mod server;

use crate::api::{self, AppState};
use axum::Router;

pub use server::{ServerLimits, serve, serve_app, serve_with};

/// Every route of the app: the API's and the dashboard's.
pub fn routes() -> api::Routes {
    api::routes().merge(crate::dashboard::routes())
}

/// The whole HTTP app over `state`.
pub fn app(state: AppState) -> Router {
    guarded(routes(), state)
}

/// A worker's own monitoring app: `/health` and `/metrics` only, with the same guards.
pub fn monitoring_app(state: AppState) -> Router {
    guarded(api::monitoring_routes(), state)
}

/// `routes` behind the guards every response gets.
fn guarded(routes: api::Routes, state: AppState) -> Router {
    api::with_fallbacks(routes.into_router())
        .layer(axum::middleware::from_fn(guard::origin_check))
        .layer(axum::middleware::from_fn(guard::no_nul_in_target))
        .layer(axum::middleware::from_fn(guard::security_headers))
        .layer(axum::extract::DefaultBodyLimit::max(guard::BODY_LIMIT))
        // Outermost: every request is observed, the ones a guard refused included.
        .layer(axum::middleware::from_fn(api::observe))
        .with_state(state)
}
