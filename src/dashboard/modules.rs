//! The modules area: the catalog with maturity, versions and how many tenants are in each
//! status, upgrade and rollback; a module's tenants with status and version, suspend and
//! resume; the approval queue (approve / reject); and the audit log with filters. Every
//! action goes through the same operation as the API's.

use super::html::{badge, button, notice, time, url};
use super::{PageError, gate, render};
use crate::api::AppState;
use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::api::jobs::COUNT_CAP;
use crate::api::modules::{lifecycle, operate_on};
use crate::domain::status::TenantModuleStatus;
use crate::store::domain::{AuditAbout, AuditFilter, ModuleRecord, TenantModuleRecord};
use axum::extract::{Form, Path, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

/// Version ids to version names for the given modules.
pub(super) async fn version_names<'a>(
    state: &AppState,
    modules: impl Iterator<Item = &'a str>,
) -> Result<HashMap<i64, String>, PageError> {
    let mut names = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for module in modules {
        if seen.insert(module.to_string()) {
            for version in state.store.versions_of(module).await? {
                names.insert(version.id, version.version);
            }
        }
    }
    Ok(names)
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct CatalogQuery {
    /// Show this module's tenants.
    #[serde(default)]
    module: String,
    #[serde(default)]
    done: String,
}

/// One catalog row: the module, its published versions, its tenants.
struct CatalogRow {
    module: ModuleRecord,
    versions: Vec<String>,
    tenants: Vec<TenantModuleRecord>,
}

pub(super) async fn catalog(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    Query(query): Query<CatalogQuery>,
) -> Result<Html<String>, PageError> {
    let caller = gate(caller)?;
    caller.may_read_deployment()?;
    let mut rows = Vec::new();
    for module in state.store.modules_list().await? {
        let versions = state.store.versions_of(&module.slug).await?;
        let tenants = state.store.module_tenants(&module.slug).await?;
        rows.push(CatalogRow {
            versions: versions.into_iter().map(|v| v.version).collect(),
            tenants,
            module,
        });
    }
    let names = version_names(&state, rows.iter().map(|r| r.module.slug.as_str())).await?;
    let pending: Vec<&TenantModuleRecord> = rows
        .iter()
        .flat_map(|r| &r.tenants)
        .filter(|m| m.status == TenantModuleStatus::PendingApproval)
        .collect();
    let message = match query.done.as_str() {
        "approve" => Some("approved: provisioning has started"),
        "reject" => Some("rejected"),
        "suspend" => Some("suspended"),
        "resume" => Some("resumed"),
        "upgrade" => Some("upgrade started: its run is under Runs"),
        "rollback" => Some("rolled back"),
        _ => None,
    };
    let body = html! {
        (notice(message.map(str::to_string)))
        h2 { "Approval queue" }
        table id="approvals" data-live {
            tr { th { "tenant" } th { "module" } th { "requested" } th { "approve, or reject with a reason" } }
            @for m in &pending {
                tr id={ "approval-" (m.tenant_id) "-" (m.module) } {
                    td { a href={ "/dashboard/tenant/" (m.tenant_id) } { (m.tenant_id) } }
                    td { (m.module) }
                    td { (time(Some(m.requested_at))) }
                    td {
                        (button(&format!("/dashboard/modules/{}/{}/approve", m.tenant_id, url(&m.module)), "Approve", "primary"))
                        " " (reason_form(m.tenant_id, &m.module, "reject", "Reject"))
                    }
                }
            }
            @if pending.is_empty() { tr { td colspan="4" { "nothing waits for approval" } } }
        }
        h2 { "Catalog" }
        table id="catalog" data-live {
            tr { th { "module" } th { "maturity" } th { "depends on" } th { "versions" } th { "tenants by status" } th { "upgrade / rollback" } }
            @for row in &rows {
                tr id={ "catalog-" (row.module.slug) } {
                    td { a href={ "/dashboard/modules?module=" (url(&row.module.slug)) } { (row.module.slug) } br; small { (row.module.name) } }
                    td { (badge(row.module.maturity.as_str())) }
                    td { (row.module.dependencies.join(", ")) }
                    td { (row.versions.join(", ")) }
                    td { @for (status, n) in status_counts(&row.tenants) { (badge(status)) " " (n) " " } }
                    td {
                        form method="post" action={ "/dashboard/modules/catalog/" (url(&row.module.slug)) "/upgrade" } class="inline" {
                            select name="version" aria-label="version" id={ "upgrade-" (row.module.slug) } {
                                @for version in row.versions.iter().rev() { option { (version) } }
                            }
                            button type="submit" class="primary" { "Upgrade" }
                        }
                        " " (button(&format!("/dashboard/modules/catalog/{}/rollback", url(&row.module.slug)), "Roll back", "danger"))
                    }
                }
            }
        }
        @if let Some(row) = rows.iter().find(|r| r.module.slug == query.module) {
            h2 { "Tenants of " (row.module.slug) }
            (module_tenants(&row.tenants, &names))
        }
    };
    Ok(render("Modules", &caller, body))
}

fn status_counts(tenants: &[TenantModuleRecord]) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for m in tenants {
        *counts.entry(m.status.as_str()).or_default() += 1;
    }
    counts
}

/// A module's tenants, with suspend (with a reason) and resume.
fn module_tenants(tenants: &[TenantModuleRecord], versions: &HashMap<i64, String>) -> Markup {
    html! {
        table id="module-tenants" data-live {
            tr { th { "tenant" } th { "status" } th { "version" } th { "why" } th { "since" } th {} }
            @for m in tenants {
                tr id={ "tenant-module-" (m.tenant_id) } {
                    td { a href={ "/dashboard/tenant/" (m.tenant_id) } { (m.tenant_id) } }
                    td { (badge(m.status.as_str())) }
                    td { (m.version_id.and_then(|v| versions.get(&v)).map(String::as_str).unwrap_or("")) }
                    td { (m.status_reason.as_deref().unwrap_or("")) }
                    td { (time(Some(m.updated_at))) }
                    td {
                        @if m.status == TenantModuleStatus::Suspended {
                            (button(&format!("/dashboard/modules/{}/{}/resume", m.tenant_id, url(&m.module)), "Resume", "primary"))
                        } @else if m.status == TenantModuleStatus::Enabled {
                            (reason_form(m.tenant_id, &m.module, "suspend", "Suspend"))
                        }
                    }
                }
            }
            @if tenants.is_empty() { tr { td colspan="6" { "no tenant has this module" } } }
        }
    }
}

/// A form posting `action` with a required reason.
fn reason_form(tenant: i64, module: &str, action: &str, label: &str) -> Markup {
    html! {
        form method="post" action={ "/dashboard/modules/" (tenant) "/" (url(module)) "/" (action) } class="inline" {
            input name="reason" placeholder="reason" required size="16";
            button type="submit" class="danger" { (label) }
        }
    }
}

/// What a module action carries: a reason (reject, suspend) or a version (upgrade).
#[derive(Debug, Default, Deserialize)]
pub(super) struct ActionForm {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    version: String,
    /// `yes` once the operator confirmed a catalog-wide action (it touches every tenant).
    #[serde(default)]
    confirmed: String,
}

/// The page that asks before a catalog upgrade or rollback, which acts on every tenant of
/// the module: what it does and to how many tenants, and a button that confirms it.
async fn confirm_catalog_action(
    state: &AppState,
    caller: &Caller,
    module: &str,
    action: &str,
    form: &ActionForm,
) -> Result<Response, PageError> {
    let tenants = state.store.module_tenants(module).await?;
    let moved = tenants.iter().filter(|m| m.status.takes_upgrades()).count();
    let what = match action {
        "upgrade" => format!(
            "Upgrade {module} to {} for its {moved} tenant(s) in use ({} in all; the others \
             catch up when they are turned back on)?",
            form.version.trim(),
            tenants.len()
        ),
        _ => format!(
            "Roll {module}'s last upgrade back, for the tenants it upgraded ({} tenant(s) in \
             all)?",
            tenants.len()
        ),
    };
    let body = html! {
        p id="confirm-what" { (what) }
        form method="post" action={ "/dashboard/modules/catalog/" (url(module)) "/" (url(action)) } class="inline" {
            input type="hidden" name="version" value=(form.version);
            input type="hidden" name="confirmed" value="yes";
            button type="submit" class="primary" id={ "confirm-" (action) } { "Yes, " (action) }
        }
        " " a href={ "/dashboard/modules?module=" (url(module)) } id="cancel" { "Cancel" }
    };
    Ok(render(&format!("{action} {module}?"), caller, body).into_response())
}

/// A tenant module's approve, reject, suspend or resume (`/dashboard/modules/{tenant}/…`), or
/// a catalog upgrade or rollback (`/dashboard/modules/catalog/{module}/…`).
pub(super) async fn operate(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    Path((tenant, module, action)): Path<(String, String, String)>,
    Form(form): Form<ActionForm>,
) -> Result<Response, PageError> {
    let caller = gate(caller)?;
    let reason = Some(form.reason.trim().to_string()).filter(|r| !r.is_empty());
    if tenant == "catalog" {
        let life = lifecycle(&state)?;
        let known = matches!(action.as_str(), "upgrade" | "rollback");
        if known && form.confirmed != "yes" {
            // Only a master admin acts on the catalog: others are refused before asking.
            caller.may_operate(None)?;
            return confirm_catalog_action(&state, &caller, &module, &action, &form).await;
        }
        match action.as_str() {
            "upgrade" => {
                let version = Some(form.version.trim())
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| ApiError::bad_request("which version?"))?;
                life.upgrade(&module, version, &caller.actor())
                    .await
                    .map_err(ApiError::from)?;
            }
            "rollback" => {
                life.rollback(&module, state.rollback_window, &caller.actor())
                    .await
                    .map_err(ApiError::from)?;
            }
            other => {
                return Err(ApiError::not_found(format!(
                    "no catalog action `{other}`; upgrade or rollback"
                ))
                .into());
            }
        }
    } else {
        let id = crate::api::modules::tenant_id(&tenant)?;
        operate_on(&state, &caller, id, &module, &action, reason).await?;
    }
    Ok(Redirect::to(&format!(
        "/dashboard/modules?module={}&done={}",
        url(&module),
        url(&action)
    ))
    .into_response())
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct AuditQuery {
    /// A tenant id, `catalog`, or empty for every row.
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    module: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    actor: String,
    before_id: Option<i64>,
    after_id: Option<i64>,
}

const AUDIT_PAGE: i64 = 100;

pub(super) async fn audit(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    Query(query): Query<AuditQuery>,
) -> Result<Html<String>, PageError> {
    let caller = gate(caller)?;
    let about = match (query.tenant.trim(), caller.confined_to()) {
        // A tenant admin reads its own tenant's rows only.
        (asked, Some(own)) if asked.is_empty() || asked == own.to_string() => {
            AuditAbout::Tenant(own)
        }
        (_, Some(_)) => return Err(ApiError::forbidden("this belongs to another tenant").into()),
        ("", None) => AuditAbout::Any,
        ("catalog", None) => AuditAbout::Catalog,
        (id, None) => AuditAbout::Tenant(crate::api::modules::tenant_id(id)?),
    };
    if let AuditAbout::Tenant(id) = about {
        caller.may_manage_tenant(id)?;
    } else {
        caller.may_read_deployment()?;
    }
    let some = |text: &str| Some(text.trim().to_string()).filter(|t| !t.is_empty());
    let filter = AuditFilter {
        about,
        module: some(&query.module),
        action: some(&query.action),
        actor: some(&query.actor),
        before_id: query.before_id,
        after_id: query.after_id,
        limit: AUDIT_PAGE,
    };
    let rows = state.store.audit_search(&filter).await?;
    let total = state.store.audit_count(&filter, COUNT_CAP).await?;
    let full = rows.len() as i64 == AUDIT_PAGE;
    // Older rows exist below a full page, or below any page reached by going up; newer ones
    // above a page reached by going down, or above a full page reached by going up.
    let older = match rows.last() {
        Some(last) if full || query.after_id.is_some() => Some(last.id),
        _ => None,
    };
    let newer = match rows.first() {
        Some(first) if query.before_id.is_some() || (query.after_id.is_some() && full) => {
            Some(first.id)
        }
        _ => None,
    };
    let page_link = |cursor: &str, id: i64| {
        format!(
            "/dashboard/audit?tenant={}&module={}&action={}&actor={}&{cursor}={id}",
            url(&query.tenant),
            url(&query.module),
            url(&query.action),
            url(&query.actor)
        )
    };
    let field = |name: &str, label: &str, value: &str| {
        html! { label { (label) input name=(name) id={ "audit-" (name) } value=(value); } }
    };
    let json = |value: &Option<serde_json::Value>| {
        value.as_ref().map(|v| v.to_string()).unwrap_or_default()
    };
    let body = html! {
        form method="get" action="/dashboard/audit" class="filters" {
            (field("tenant", "tenant (id, or catalog)", &query.tenant))
            (field("module", "module", &query.module))
            (field("action", "action starts with", &query.action))
            (field("actor", "actor", &query.actor))
            button type="submit" id="audit-search" { "Filter" }
        }
        table id="audit" data-live {
            tr { th { "at" } th { "actor" } th { "action" } th { "tenant" } th { "module" } th { "entity" } th { "before" } th { "after" } }
            @for row in &rows {
                tr id={ "audit-" (row.id) } {
                    td { (time(Some(row.at))) } td { (row.actor) } td { (row.action) }
                    td { @if let Some(t) = row.tenant_id { (t) } @else { "catalog" } }
                    td { (row.module.as_deref().unwrap_or("")) } td { (row.entity) }
                    td { code { (json(&row.before)) } } td { code { (json(&row.after)) } }
                }
            }
            @if rows.is_empty() { tr { td colspan="8" { "no audit row matches" } } }
        }
        p.pager id="pager" {
            span id="total" {
                @if total >= COUNT_CAP { "more than " (COUNT_CAP - 1) } @else { (total) }
                " rows · showing " (rows.len()) ", newest first"
            }
            @if let Some(after) = newer { " " a id="newer" href=(page_link("after_id", after)) { "← Newer" } }
            @if let Some(before) = older { " " a id="older" href=(page_link("before_id", before)) { "Older →" } }
        }
    };
    Ok(render("Audit log", &caller, body))
}
