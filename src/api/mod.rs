//! The HTTP API (axum): how the platform and operators reach steward (SPEC §5). Every route
//! but `/health` needs a bearer JWT ([`auth`]); every error is JSON with a stable code
//! ([`error`]); `/openapi.json` describes every route ([`openapi`]); `/dashboard` is the
//! operators' HTML view of the same ([`crate::dashboard`], which sits above the API; the two
//! are put together in [`crate::http`]).
//!
//! | route | who |
//! |---|---|
//! | `GET /health` | anyone: database and export storage reachable |
//! | `GET /openapi.json` | anyone: it describes the API, not its data |
//! | `GET /metrics` | master admins, the platform, the `metrics` scrape role (deployment-wide figures: not tenant admins) |
//! | `GET /api/jobs?state&queue&kind&tenant&after_id&limit`, `GET /api/jobs/{id}` | readers (a tenant admin: its own jobs) |
//! | `POST /api/jobs` | the roles a kind's `enqueued_by` names (never a workflow step or a webhook delivery) |
//! | `POST /api/tenant/{id}/modules/{module}/usage` | the platform, master admins (usage feeds billing) |
//! | `POST /api/jobs/{id}/{retry,discard,cancel}`, `POST /api/dlq/{retry,discard}` | operators |
//! | `GET /api/queues`, `GET /api/queues/{queue}`, `GET /api/workers`, `GET /api/breakers` | master admins, the platform |
//! | `POST /api/queues/{queue}/{pause,resume}` | master admins |
//! | `POST /api/runs`, `GET /api/runs`, `GET /api/runs/{id}` | the platform and readers |
//! | `POST /api/runs/{id}/{retry,cancel}` | operators |
//! | `POST /api/runs/{id}/signal/{name}` | the roles the workflow names for that signal |
//! | `GET /api/modules` | everyone (a tenant admin sees its tenant's catalog, SPEC §4.1) |
//! | `/api/tenant/{id}/modules[/{module}[/usage]]`, `GET /api/tenant/{id}/audit` | the tenant, the platform |
//! | `POST /api/tenant/{id}/modules/{module}/{approve,reject,suspend,resume,repair}` | master admins (the operations decide) |
//! | `PUT /api/catalog/{module}/maturity`, `POST /api/catalog/{module}/{upgrade,rollback}`, `POST /api/plans/{plan}/modules` | master admins |

pub mod auth;
pub(crate) mod enqueue;
pub mod error;
pub(crate) mod jobs;
pub(crate) mod modules;
pub mod openapi;
pub mod prometheus;
pub(crate) mod queues;
pub(crate) mod runs;
mod usage;

use crate::export::SharedExports;
use crate::lifecycle::Lifecycle;
use crate::lifecycle::operator::Operator;
use crate::store::SharedStore;
use crate::workflow::Engine;
use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::routing::{get, post, put};
use std::sync::Arc;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: SharedStore,
    pub engine: Arc<Engine>,
    /// The module lifecycle, when `workflows/` defines it.
    pub lifecycle: Option<Lifecycle>,
    /// Run and job actions (retry, cancel) with the lifecycle's rules.
    pub operator: Operator,
    /// How long after an upgrade a manual rollback is allowed.
    pub rollback_window: std::time::Duration,
    pub exports: SharedExports,
    /// Enqueues jobs of the engine's kinds (their declared payloads checked).
    pub client: crate::Client,
    pub keys: auth::AuthKeys,
    /// The SHA-256 of the scrape credential that may read `/metrics` (and nothing else).
    pub metrics_token: Option<[u8; 32]>,
}

impl AppState {
    /// The state of an API over `engine`'s store and workflows.
    pub fn new(engine: Arc<Engine>, exports: SharedExports, keys: auth::AuthKeys) -> Self {
        Self {
            store: Arc::clone(engine.store()),
            client: crate::Client::new(Arc::clone(engine.store()), engine.kinds().clone()),
            lifecycle: Lifecycle::new(Arc::clone(&engine)).ok(),
            operator: Operator::new(Arc::clone(&engine)),
            rollback_window: std::time::Duration::from_secs(48 * 3600),
            engine,
            exports,
            keys,
            metrics_token: None,
        }
    }

    /// Accept `token` as a bearer credential for `/metrics` only.
    pub fn with_metrics_token(mut self, token: &str) -> Result<Self, String> {
        if token.len() < 32 {
            return Err(
                "the metrics token (STEWARD_METRICS_TOKEN) must be at least 32 bytes".into(),
            );
        }
        self.metrics_token = Some(auth::digest(token));
        Ok(self)
    }
}

/// A router that also lists what it serves (method and path template), so that the table
/// of who may call what (SECURITY.md) can be checked against every route.
pub struct Routes {
    router: Router<AppState>,
    served: Vec<(&'static str, &'static str)>,
}

impl Default for Routes {
    fn default() -> Self {
        Self {
            router: Router::new(),
            served: Vec::new(),
        }
    }
}

impl Routes {
    /// Serve `path` with `handler`, which answers `methods` (space-separated, e.g. `GET POST`).
    pub fn add(
        mut self,
        methods: &'static str,
        path: &'static str,
        handler: axum::routing::MethodRouter<AppState>,
    ) -> Self {
        self.router = self.router.route(path, handler);
        self.served
            .extend(methods.split_whitespace().map(|method| (method, path)));
        self
    }

    /// Both sets of routes.
    pub fn merge(mut self, other: Routes) -> Self {
        self.router = self.router.merge(other.router);
        self.served.extend(other.served);
        self
    }

    /// What is served: (method, path template) pairs.
    pub fn served(&self) -> &[(&'static str, &'static str)] {
        &self.served
    }

    /// The router.
    pub fn into_router(self) -> Router<AppState> {
        self.router
    }
}

/// What a worker serves on its own (`steward worker --metrics-listen`): `/health` and
/// `/metrics`, nothing else.
pub fn monitoring_routes() -> Routes {
    Routes::default()
        .add("GET", "/health", get(health))
        .add("GET", "/metrics", get(metrics))
}

/// The API's routes (the whole HTTP app, with the dashboard's, is [`crate::http::app`]).
pub fn routes() -> Routes {
    use axum::routing::patch;
    Routes::default()
        .add("GET", "/health", get(health))
        .add("GET", "/openapi.json", get(openapi::document))
        .add("GET", "/metrics", get(metrics))
        .add(
            "GET POST",
            "/api/jobs",
            get(jobs::list).post(enqueue::enqueue),
        )
        .add("GET", "/api/jobs/{id}", get(jobs::show))
        .add("POST", "/api/jobs/{id}/{action}", post(jobs::act))
        .add("POST", "/api/dlq/{action}", post(jobs::bulk))
        .add("GET", "/api/queues", get(queues::list))
        .add("GET", "/api/queues/{queue}", get(queues::show))
        .add("POST", "/api/queues/{queue}/{action}", post(queues::act))
        .add("GET", "/api/workers", get(queues::workers))
        .add("GET", "/api/breakers", get(queues::breakers))
        .add("GET POST", "/api/runs", post(runs::start).get(runs::list))
        .add("GET", "/api/runs/{id}", get(runs::show))
        .add("POST", "/api/runs/{id}/signal/{name}", post(runs::signal))
        .add("POST", "/api/runs/{id}/{action}", post(runs::act))
        .add("GET", "/api/modules", get(modules::catalog))
        .add(
            "GET POST",
            "/api/tenant/{id}/modules",
            get(modules::tenant_modules).post(modules::request),
        )
        .add(
            "PATCH",
            "/api/tenant/{id}/modules/{module}",
            patch(modules::change),
        )
        .add(
            "GET POST",
            "/api/tenant/{id}/modules/{module}/usage",
            get(modules::usage).post(usage::record),
        )
        .add(
            "POST",
            "/api/tenant/{id}/modules/{module}/{action}",
            post(modules::operate),
        )
        .add("GET", "/api/tenant/{id}/audit", get(modules::audit))
        .add(
            "PUT",
            "/api/catalog/{module}/maturity",
            put(modules::set_maturity),
        )
        .add(
            "POST",
            "/api/catalog/{module}/upgrade",
            post(modules::upgrade),
        )
        .add(
            "POST",
            "/api/catalog/{module}/rollback",
            post(modules::rollback),
        )
        .add("POST", "/api/plans/{plan}/modules", post(modules::plan_add))
}

/// Answers for what no route takes: 404 `not_found`, 405 `method_not_allowed` (JSON).
pub fn with_fallbacks(router: Router<AppState>) -> Router<AppState> {
    router
        .fallback(|| async { error::ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            error::ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take this method",
            )
        })
}

/// Every request runs in a span with its trace id (from a W3C `traceparent` header, else a
/// new one), answered in the `x-trace-id` header, is logged once with its status and
/// duration, and lands in the request duration histogram.
pub async fn observe(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument;
    let trace_id = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('-').nth(1))
        .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    // Metric labels come from fixed sets, never from what a client sent: the method if it
    // is a standard one, the route template, the status class.
    let method_label = match method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let span = tracing::info_span!("steward.http", %trace_id, %method, %path);
    let started = std::time::Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    // The caller can quote it: a 5xx body keeps its detail in the log under this id.
    if let Ok(value) = axum::http::HeaderValue::from_str(&trace_id) {
        response.headers_mut().insert("x-trace-id", value);
    }
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    span.in_scope(|| {
        tracing::info!(status, elapsed_ms = elapsed.as_millis() as u64, "request");
    });
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    ::metrics::histogram!("steward_http_request_duration_seconds",
        "method" => method_label, "route" => route, "status" => class)
    .record(elapsed.as_secs_f64());
    response
}

/// `/metrics`: deployment-wide figures, so the scrape credential, a master_admin or the
/// platform's service tokens; not a tenant admin.
#[utoipa::path(get, path = "/metrics", tag = "monitoring",
    responses((status = 200, content_type = "text/plain", body = String,
               description = "Prometheus text exposition: every series with HELP and TYPE"),
              (status = 401, body = error::ErrorBody), (status = 403, body = error::ErrorBody)))]
pub(crate) async fn metrics(
    State(state): State<AppState>,
    _scraper: auth::Scraper,
) -> Result<([(axum::http::HeaderName, &'static str); 1], String), error::ApiError> {
    let body = prometheus::render(&state).await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    ))
}

/// What `/health` answers.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`, or `degraded` when the database or the export storage is not reachable.
    pub status: String,
    /// `ok` or `unavailable` (the cause is in the log).
    pub database: String,
    /// `ok` or `unavailable` (the cause is in the log).
    pub storage: String,
}

/// `/health`, for anyone: the database and the export storage reachable.
#[utoipa::path(get, path = "/health", tag = "monitoring", security(()),
    responses((status = 200, body = Health, description = "the database and the export storage are reachable"),
              (status = 503, body = Health, description = "one of them is not")))]
pub(crate) async fn health(State(state): State<AppState>) -> (StatusCode, axum::Json<Health>) {
    let database = state.store.ping().await;
    let storage = state.exports.check().await;
    let ok = database.is_ok() && storage.is_ok();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // Anyone reads this: the cause (a server's message, a storage path) goes to the log only.
    let describe = |what: &str, r: Result<(), String>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) => {
            tracing::warn!(error = %e, "health: the {what} is unavailable");
            "unavailable".to_string()
        }
    };
    (
        status,
        axum::Json(Health {
            status: if ok { "ok" } else { "degraded" }.into(),
            database: describe("database", database.map_err(|e| e.to_string())),
            storage: describe("export storage", storage.map_err(|e| e.to_string())),
        }),
    )
}
