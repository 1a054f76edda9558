//! The operators' dashboard: server-rendered HTML (maud templates, escaped by default) over
//! the same store, the same operations and the same auth as the API (a token pasted once at
//! `/dashboard/login`, then kept in an HttpOnly, SameSite cookie). Pages: the overview, queues
//! (with pause and resume), jobs with search, a job with its attempts, the dead-letter queue
//! with single and confirmed bulk retry and discard, workers, runs and a run's step graph
//! (cancel, retry), modules (catalog, tenants' modules, approvals), the audit log, the cron
//! schedules, and a tenant's page, where a tenant admin lands. Lists and running runs refresh
//! themselves (`live.js`).

mod html;
mod jobs;
mod modules;
mod overview;
mod queues;
mod runs;
mod tenant;

use crate::api::auth::{COOKIE, Caller};
use crate::api::error::ApiError;
use crate::api::{AppState, Routes};
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

/// The dashboard's routes, under `/dashboard`.
pub fn routes() -> Routes {
    Routes::default()
        .add("GET", "/dashboard", get(overview::page))
        .add("GET POST", "/dashboard/login", get(login_form).post(login))
        .add("POST", "/dashboard/logout", post(logout))
        .add("GET", "/dashboard/jobs", get(jobs::list))
        .add("GET", "/dashboard/jobs/{id}", get(jobs::show))
        .add("POST", "/dashboard/jobs/{id}/{action}", post(jobs::act))
        .add("GET", "/dashboard/dead", get(jobs::dead))
        .add("POST", "/dashboard/dead/{action}", post(jobs::bulk))
        .add("GET", "/dashboard/runs", get(runs::list))
        .add("GET", "/dashboard/runs/{id}", get(runs::show))
        .add("POST", "/dashboard/runs/{id}/retry", post(runs::retry))
        .add("GET", "/dashboard/schedules", get(runs::schedules))
        .add("GET", "/dashboard/tenant/{id}", get(tenant::page))
        .add("GET", "/dashboard/queues", get(queues::list))
        .add("GET", "/dashboard/queues/{queue}", get(queues::show))
        .add(
            "POST",
            "/dashboard/queues/{queue}/{action}",
            post(queues::act),
        )
        .add("GET", "/dashboard/workers", get(queues::workers))
        .add("POST", "/dashboard/runs/{id}/cancel", post(runs::cancel))
        .add("GET", "/dashboard/modules", get(modules::catalog))
        .add(
            "POST",
            "/dashboard/modules/{tenant}/{module}/{action}",
            post(modules::operate),
        )
        .add("GET", "/dashboard/audit", get(modules::audit))
        .add("GET", "/dashboard/live.js", get(live_script))
}

/// The live-update script, for logged-in pages.
async fn live_script(caller: Result<Caller, ApiError>) -> Result<Response, PageError> {
    gate(caller)?;
    Ok((
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        html::LIVE_JS,
    )
        .into_response())
}

/// A page's HTML response.
pub(crate) fn render(title: &str, caller: &Caller, body: maud::Markup) -> Html<String> {
    Html(html::layout(title, &who(caller), body).into_string())
}

/// What a page handler gets back when it fails: an HTML error page (or the login page for
/// a caller without a valid token).
pub(crate) struct PageError(ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl From<crate::store::StoreError> for PageError {
    fn from(e: crate::store::StoreError) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        if self.0.status == StatusCode::UNAUTHORIZED {
            return Redirect::to("/dashboard/login").into_response();
        }
        let body = maud::html! {
            p.error id="error" { (self.0.code) ": " (self.0.message) }
            p { a href="/dashboard" { "Back to the overview" } }
        };
        (
            self.0.status,
            Html(html::layout("Error", "", body).into_string()),
        )
            .into_response()
    }
}

/// The caller, or the login page.
pub(crate) fn gate(caller: Result<Caller, ApiError>) -> Result<Caller, PageError> {
    caller.map_err(PageError)
}

/// How the header names the caller.
pub(crate) fn who(caller: &Caller) -> String {
    let role = serde_json::to_value(caller.0.role)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    match caller.0.tenant_id {
        Some(tenant) => format!("{} ({role}, tenant {tenant})", caller.0.sub),
        None => format!("{} ({role})", caller.0.sub),
    }
}

async fn login_form() -> Html<String> {
    Html(html::layout("Log in", "", login_body(None)).into_string())
}

fn login_body(error: Option<&str>) -> maud::Markup {
    maud::html! {
        @if let Some(error) = error { p.error { (error) } }
        form method="post" action="/dashboard/login" class="filters" {
            label {
                "Token (from " code { "steward token --role master_admin" } ")"
                textarea name="token" id="token" rows="4" cols="80" required {}
            }
            button type="submit" class="primary" id="login" { "Log in" }
        }
    }
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// The cookie's attributes: never readable by script, never sent cross-site, and `Secure`
/// when the request came over TLS (through a proxy that says so).
fn cookie_attributes(headers: &HeaderMap) -> &'static str {
    if crate::http::guard::over_tls(headers) {
        "Path=/; HttpOnly; SameSite=Strict; Secure"
    } else {
        "Path=/; HttpOnly; SameSite=Strict"
    }
}

async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let token = form.token.trim();
    match state.keys.check(token) {
        Ok(_) => (
            [(
                header::SET_COOKIE,
                format!("{COOKIE}={token}; {}", cookie_attributes(&headers)),
            )],
            Redirect::to("/dashboard"),
        )
            .into_response(),
        Err(e) => (
            StatusCode::UNAUTHORIZED,
            Html(html::layout("Log in", "", login_body(Some(&e.message))).into_string()),
        )
            .into_response(),
    }
}

async fn logout(headers: HeaderMap) -> Response {
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; {}; Max-Age=0", cookie_attributes(&headers)),
        )],
        Redirect::to("/dashboard/login"),
    )
        .into_response()
}
