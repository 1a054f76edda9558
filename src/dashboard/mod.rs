//! The operators' dashboard: server-rendered HTML over the same store and the same auth as
//! the API (a token pasted once at `/dashboard/login`, then kept in an HttpOnly, SameSite
//! cookie). Pages: the overview (counts per state, throughput chart), jobs with filters, a
//! job with its attempts, the dead-letter queue with single and bulk retry and discard,
//! runs with their steps as a timeline, the cron schedules, and a tenant's page (its modules
//! and jobs), where a tenant admin lands.

mod html;
mod jobs;
mod overview;
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
        let body = format!(
            r#"<p class="error" id="error">{}: {}</p><p><a href="/dashboard">Back to the overview</a></p>"#,
            html::esc(self.0.code),
            html::esc(&self.0.message)
        );
        (self.0.status, Html(html::page("Error", "", &body))).into_response()
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
    Html(html::page("Log in", "", LOGIN_FORM))
}

const LOGIN_FORM: &str = r#"<form method="post" action="/dashboard/login" class="filters">
<label>Token (from <code>steward token --role master_admin</code>)
<textarea name="token" id="token" rows="4" cols="80" required></textarea></label>
<button type="submit" class="primary" id="login">Log in</button></form>"#;

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
            Html(html::page(
                "Log in",
                "",
                &format!(
                    r#"<p class="error">{}</p>{LOGIN_FORM}"#,
                    html::esc(&e.message)
                ),
            )),
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
