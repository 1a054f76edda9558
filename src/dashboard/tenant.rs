//! A tenant's page: its modules (status, version, why), its recent jobs and links to the rest
//! of its work. A tenant admin lands here after logging in (the overview covers every tenant).

use super::html::{badge, time};
use super::modules::version_names;
use super::{PageError, gate, render};
use crate::api::AppState;
use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::types::JobFilter;
use axum::extract::{Path, State};
use axum::response::Html;
use maud::html;

pub(super) async fn page(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    Path(id): Path<String>,
) -> Result<Html<String>, PageError> {
    let caller = gate(caller)?;
    let id = crate::api::modules::tenant_id(&id)?;
    caller.may_manage_tenant(id)?;
    let tenant = state
        .store
        .tenant_get(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no tenant {id}")))?;
    let modules = state.store.tenant_modules(id).await?;
    let versions = version_names(&state, modules.iter().map(|m| m.module.as_str())).await?;
    let jobs = state
        .store
        .jobs_list(&JobFilter {
            tenant: Some(id.to_string()),
            newest_first: true,
            limit: Some(20),
            ..JobFilter::default()
        })
        .await?;
    let body = html! {
        p id="tenant" {
            (tenant.name) " " code { (tenant.slug) } " · "
            a href={ "/dashboard/jobs?tenant=" (id) } { "its jobs" } " · "
            a href={ "/dashboard/dead?tenant=" (id) } { "its dead letters" } " · "
            a href={ "/dashboard/audit?tenant=" (id) } { "its audit log" }
        }
        h2 { "Modules" }
        table id="modules" data-live {
            tr { th { "module" } th { "status" } th { "version" } th { "why" } th { "since" } }
            @for module in &modules {
                tr id={ "module-" (module.module) } {
                    td { (module.module) }
                    td { (badge(module.status.as_str())) }
                    td { (module.version_id.and_then(|v| versions.get(&v)).map(String::as_str).unwrap_or("")) }
                    td { (module.status_reason.as_deref().unwrap_or("")) }
                    td { (time(Some(module.updated_at))) }
                }
            }
            @if modules.is_empty() { tr { td colspan="5" { "no module yet" } } }
        }
        h2 { "Latest jobs (all under its jobs)" }
        table id="jobs" data-live {
            tr { th { "id" } th { "kind" } th { "queue" } th { "state" } th { "attempt" } th { "created" } }
            @for job in &jobs {
                tr {
                    td { a href={ "/dashboard/jobs/" (job.id) } { (job.id) } }
                    td { (job.kind) } td { (job.queue) } td { (badge(job.state)) }
                    td { (job.attempt) "/" (job.max_attempts) }
                    td { (time(Some(job.created_at))) }
                }
            }
        }
    };
    Ok(render(&format!("Tenant {id}"), &caller, body))
}
