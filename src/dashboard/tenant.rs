//! A tenant's page: its modules (status, version, why), its recent jobs and links to the rest
//! of its work. A tenant admin lands here after logging in (the overview covers every tenant).

use super::html::{badge, esc, page as layout, time};
use super::{PageError, gate, who};
use crate::api::AppState;
use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::types::JobFilter;
use axum::extract::{Path, State};
use axum::response::Html;
use std::fmt::Write;

pub(super) async fn page(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    Path(id): Path<String>,
) -> Result<Html<String>, PageError> {
    let caller = gate(caller)?;
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("`{id}` is not a tenant id")))?;
    caller.may_manage_tenant(id)?;
    let tenant = state
        .store
        .tenant_get(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no tenant {id}")))?;
    let mut body = format!(
        r#"<p id="tenant">{name} <code>{slug}</code> · <a href="/dashboard/jobs?tenant={id}">its jobs</a> · <a href="/dashboard/dead?tenant={id}">its dead letters</a></p>
<h2>Modules</h2><table id="modules"><tr><th>module</th><th>status</th><th>version</th><th>why</th><th>since</th></tr>"#,
        name = esc(&tenant.name),
        slug = esc(&tenant.slug),
    );
    let modules = state.store.tenant_modules(id).await?;
    for module in &modules {
        let version = match module.version_id {
            Some(version_id) => state
                .store
                .versions_of(&module.module)
                .await?
                .into_iter()
                .find(|v| v.id == version_id)
                .map(|v| v.version)
                .unwrap_or_default(),
            None => String::new(),
        };
        let _ = write!(
            body,
            r#"<tr id="module-{m}"><td>{m}</td><td>{status}</td><td>{version}</td><td>{why}</td><td>{since}</td></tr>"#,
            m = esc(&module.module),
            status = badge(module.status.as_str()),
            version = esc(version),
            why = esc(module.status_reason.as_deref().unwrap_or("")),
            since = time(Some(module.updated_at)),
        );
    }
    if modules.is_empty() {
        body.push_str(r#"<tr><td colspan="5">no module yet</td></tr>"#);
    }
    body.push_str("</table><h2>Jobs (the first 20; all under its jobs)</h2>");
    let jobs = state
        .store
        .jobs_list(&JobFilter {
            tenant: Some(id.to_string()),
            limit: Some(20),
            ..JobFilter::default()
        })
        .await?;
    body.push_str(
        r#"<table id="jobs"><tr><th>id</th><th>kind</th><th>queue</th><th>state</th><th>attempt</th></tr>"#,
    );
    for job in &jobs {
        let _ = write!(
            body,
            r#"<tr><td><a href="/dashboard/jobs/{id}">{id}</a></td><td>{kind}</td><td>{queue}</td><td>{state}</td><td>{attempt}/{max}</td></tr>"#,
            id = job.id,
            kind = esc(&job.kind),
            queue = esc(&job.queue),
            state = badge(job.state),
            attempt = job.attempt,
            max = job.max_attempts,
        );
    }
    body.push_str("</table>");
    Ok(Html(layout(&format!("Tenant {id}"), &who(&caller), &body)))
}
