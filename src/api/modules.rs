//! The seed's module endpoints: the catalog, a tenant's modules (request one, change its
//! state or settings, read its usage), the Master Admin's operations on a tenant module
//! (approve, reject, suspend, resume, repair), a tenant's audit log, a catalog maturity
//! change (fires the deprecation webhooks), upgrade and rollback, and a plan module change
//! (fires the plan sync). Every change goes through [`Lifecycle`]: the rules (who may, from
//! which status, dependencies, settings) are decided there, not here.

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, JsonBody, QueryArgs};
use crate::domain::maturity::Maturity;
use crate::domain::status::TenantModuleStatus;
use crate::lifecycle::Lifecycle;
use crate::lifecycle::switch::ModuleChange;
use crate::store::domain::TenantModuleRecord;
use crate::store::runs::RunId;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub(crate) fn lifecycle(state: &AppState) -> Result<&Lifecycle, ApiError> {
    state.lifecycle.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the module lifecycle workflows are not defined here (workflows/)",
        )
    })
}

pub(crate) fn tenant_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::bad_request(format!("`{raw}` is not a tenant id")))
}

/// Which tenant's view of the catalog.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CatalogQuery {
    /// The catalog as this tenant sees it (a tenant admin always sees its own).
    pub tenant: Option<i64>,
    /// Show DEPRECATED modules too (the tenant's "show legacy modules").
    #[serde(default)]
    pub show_legacy: bool,
}

/// The catalog. A tenant admin (or any caller naming a tenant) gets what that tenant's
/// marketplace lists (SPEC §4.1: ALPHA for internal testers only, BETA and MAINTENANCE with
/// their badges, DEPRECATED only with `show_legacy`, never PLANNED, IN_DEVELOPMENT or
/// RETIRED); master admins and services without a tenant get every module.
#[utoipa::path(get, path = "/api/modules", tag = "modules", params(CatalogQuery),
    responses((status = 200, body = CatalogAnswer, description = "the modules"), (status = 400, body = super::error::ErrorBody),
              (status = 403, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
pub(super) async fn catalog(
    State(state): State<AppState>,
    caller: Caller,
    QueryArgs(query): QueryArgs<CatalogQuery>,
) -> Result<Json<CatalogAnswer>, ApiError> {
    let tenant = match (caller.confined_to(), query.tenant) {
        (Some(own), Some(asked)) if own != asked => {
            return Err(ApiError::forbidden("this belongs to another tenant"));
        }
        (Some(own), _) => Some(own),
        (None, asked) => asked,
    };
    match tenant {
        Some(tenant) => {
            let modules = lifecycle(&state)?
                .catalog_for(tenant, query.show_legacy)
                .await?;
            Ok(Json(CatalogAnswer {
                tenant: Some(tenant),
                modules: modules
                    .into_iter()
                    .map(|m| CatalogModule {
                        module: m.module,
                        listing: Some(m.listing),
                    })
                    .collect(),
            }))
        }
        None => {
            let modules = state.store.modules_list().await?;
            Ok(Json(CatalogAnswer {
                tenant: None,
                modules: modules
                    .into_iter()
                    .map(|module| CatalogModule {
                        module,
                        listing: None,
                    })
                    .collect(),
            }))
        }
    }
}

/// A tenant's modules.
#[utoipa::path(get, path = "/api/tenant/{id}/modules", tag = "modules",
    params(("id" = i64, Path, description = "tenant id")),
    responses((status = 200, body = TenantModules, description = "the tenant's modules"), (status = 400, body = super::error::ErrorBody),
              (status = 403, body = super::error::ErrorBody)))]
pub(super) async fn tenant_modules(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TenantModules>, ApiError> {
    let id = tenant_id(&id)?;
    caller.may_manage_tenant(id)?;
    let modules = state.store.tenant_modules(id).await?;
    Ok(Json(TenantModules { modules }))
}

/// The body of `POST /api/tenant/{id}/modules`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestModule {
    /// The module's slug.
    pub module: String,
}

/// A tenant asks for a module: admitted (provisioning starts) or pending approval.
#[utoipa::path(post, path = "/api/tenant/{id}/modules", tag = "modules", request_body = RequestModule,
    params(("id" = i64, Path, description = "tenant id")),
    responses((status = 201, body = ModuleRequested, description = "requested"), (status = 400, body = super::error::ErrorBody),
              (status = 403, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
              (status = 422, body = super::error::ErrorBody)))]
pub(super) async fn request(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RequestModule>,
) -> Result<(StatusCode, Json<ModuleRequested>), ApiError> {
    let id = tenant_id(&id)?;
    caller.may_manage_tenant(id)?;
    let requested = lifecycle(&state)?
        .request(id, &body.module, &caller.actor())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(ModuleRequested {
            module: requested.module,
            run: requested.run,
            warning: requested.warning,
        }),
    ))
}

/// The body of `PATCH /api/tenant/{id}/modules/{module}`: a state, settings, or both.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeModule {
    /// ENABLED (turn back on), DISABLED (turn off, data kept) or ARCHIVED (export the
    /// tenant's rows, then remove them).
    pub state: Option<String>,
    /// The module's settings, validated against its version's JSON Schema.
    #[schema(value_type = Option<std::collections::HashMap<String, Value>>)]
    pub settings: Option<Value>,
}

/// Change a tenant module's state or settings.
#[utoipa::path(patch, path = "/api/tenant/{id}/modules/{module}", tag = "modules", request_body = ChangeModule,
    params(("id" = i64, Path, description = "tenant id"), ("module" = String, Path, description = "module slug")),
    responses((status = 200, body = ModuleChangeAnswer, description = "changed"), (status = 400, body = super::error::ErrorBody),
              (status = 403, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
              (status = 409, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(super) async fn change(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, module)): Path<(String, String)>,
    JsonBody(body): JsonBody<ChangeModule>,
) -> Result<Json<ModuleChangeAnswer>, ApiError> {
    let id = tenant_id(&id)?;
    caller.may_manage_tenant(id)?;
    if body.state.is_none() && body.settings.is_none() {
        return Err(ApiError::bad_request("give a state, settings, or both"));
    }
    if body.settings.as_ref().is_some_and(|s| !s.is_object()) {
        return Err(ApiError::bad_request("settings must be a JSON object"));
    }
    let change = ModuleChange {
        state: body
            .state
            .as_deref()
            .map(str::parse::<TenantModuleStatus>)
            .transpose()?,
        settings: body.settings.clone(),
    };
    let changed = lifecycle(&state)?
        .change(id, &module, &change, &caller.actor())
        .await?;
    let settings = changed
        .previous_settings
        .is_some()
        .then(|| body.settings.unwrap_or_default());
    Ok(Json(ModuleChangeAnswer {
        module: changed.module,
        run: changed.run,
        previous_settings: changed.previous_settings,
        settings,
    }))
}

/// The body of a Master Admin's operation on a tenant module.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OperateModule {
    /// Why (required for reject and suspend; shown to the tenant).
    pub reason: Option<String>,
}

/// A Master Admin's operation on a tenant module: `approve` or `reject` a pending request,
/// `suspend` a module in use or `resume` it, `repair` a record that disagrees with its
/// module (left UPGRADING, or behind an upgrade it missed).
#[utoipa::path(post, path = "/api/tenant/{id}/modules/{module}/{action}", tag = "modules",
    request_body(content = Option<OperateModule>, description = "the reason, for reject and suspend"),
    params(("id" = i64, Path, description = "tenant id"), ("module" = String, Path, description = "module slug"),
           ("action" = String, Path, description = "approve, reject, suspend, resume or repair")),
    responses((status = 200, body = ModuleOperated, description = "done"), (status = 400, body = super::error::ErrorBody),
              (status = 403, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
              (status = 409, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(super) async fn operate(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, module, action)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<ModuleOperated>, ApiError> {
    let id = tenant_id(&id)?;
    caller.may_manage_tenant(id)?;
    // The body is optional (approve, resume and repair need none).
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<OperateModule>(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))?
            .reason
    };
    Ok(Json(
        operate_on(&state, &caller, id, &module, &action, reason).await?,
    ))
}

/// Approve, reject, suspend, resume or repair a tenant's module for `caller`: the API's and
/// the dashboard's one way (the lifecycle operations decide).
pub(crate) async fn operate_on(
    state: &AppState,
    caller: &Caller,
    id: i64,
    module: &str,
    action: &str,
    reason: Option<String>,
) -> Result<ModuleOperated, ApiError> {
    caller.may_manage_tenant(id)?;
    if reason.as_deref().is_some_and(|r| r.contains('\0')) {
        return Err(ApiError::bad_request(
            "a reason cannot hold a NUL character",
        ));
    }
    let module = module.to_string();
    let action = action.to_string();
    let life = lifecycle(state)?;
    let actor = caller.actor();
    let needs_reason = || {
        reason
            .clone()
            .filter(|r| !r.trim().is_empty())
            .ok_or_else(|| ApiError::bad_request(format!("{action} needs a reason")))
    };
    let answer = match action.as_str() {
        "approve" => {
            let (record, run) = life.approve(id, &module, &actor).await?;
            ModuleOperated::of(record).with_run(run)
        }
        "reject" => ModuleOperated::of(life.reject(id, &module, &actor, &needs_reason()?).await?),
        "suspend" => ModuleOperated::of(life.suspend(id, &module, &actor, &needs_reason()?).await?),
        "resume" => ModuleOperated::of(life.resume(id, &module, &actor).await?),
        "repair" => {
            let (record, done) = life.repair(id, &module, &actor).await?;
            ModuleOperated {
                repaired: Some(done),
                ..ModuleOperated::of(record)
            }
        }
        other => {
            return Err(ApiError::not_found(format!(
                "no action `{other}`; approve, reject, suspend, resume or repair"
            )));
        }
    };
    Ok(answer)
}

/// How many audit rows.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// 1 to 1000 (default 100).
    pub limit: Option<i64>,
}

/// A tenant's audit log, newest first: every status and settings change of its modules,
/// who made it, before and after.
#[utoipa::path(get, path = "/api/tenant/{id}/audit", tag = "modules", params(
        ("id" = i64, Path, description = "tenant id"), AuditQuery),
    responses((status = 200, body = TenantAudit, description = "the audit rows"), (status = 400, body = super::error::ErrorBody),
              (status = 403, body = super::error::ErrorBody)))]
pub(super) async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryArgs(query): QueryArgs<AuditQuery>,
) -> Result<Json<TenantAudit>, ApiError> {
    let id = tenant_id(&id)?;
    caller.may_manage_tenant(id)?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let rows = state.store.audit_list(Some(id), limit).await?;
    Ok(Json(TenantAudit {
        tenant_id: id,
        audit: rows,
    }))
}

/// The body of `POST /api/catalog/{module}/upgrade`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpgradeModule {
    /// A published version, newer than the one installed.
    pub version: String,
}

/// Upgrade a module for every tenant using it (starts `module_upgrade`; a major upgrade
/// backs the tables up to the export storage first).
#[utoipa::path(post, path = "/api/catalog/{module}/upgrade", tag = "catalog", request_body = UpgradeModule,
    params(("module" = String, Path, description = "module slug")),
    responses((status = 200, body = UpgradeStarted, description = "the upgrade run"), (status = 400, body = super::error::ErrorBody),
              (status = 403, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
              (status = 409, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(super) async fn upgrade(
    State(state): State<AppState>,
    caller: Caller,
    Path(module): Path<String>,
    JsonBody(body): JsonBody<UpgradeModule>,
) -> Result<Json<UpgradeStarted>, ApiError> {
    let run = lifecycle(&state)?
        .upgrade(&module, &body.version, &caller.actor())
        .await?;
    Ok(Json(UpgradeStarted {
        module,
        version: body.version,
        run,
    }))
}

/// Roll a module's last upgrade back, within the rollback window.
#[utoipa::path(post, path = "/api/catalog/{module}/rollback", tag = "catalog",
    params(("module" = String, Path, description = "module slug")),
    responses((status = 200, body = RolledBack, description = "the tenants rolled back"), (status = 400, body = super::error::ErrorBody),
              (status = 403, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
              (status = 409, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(super) async fn rollback(
    State(state): State<AppState>,
    caller: Caller,
    Path(module): Path<String>,
) -> Result<Json<RolledBack>, ApiError> {
    let tenants = lifecycle(&state)?
        .rollback(&module, state.rollback_window, &caller.actor())
        .await?;
    Ok(Json(RolledBack { module, tenants }))
}

/// The month of a usage query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// YYYY-MM; every month when absent.
    pub month: Option<String>,
}

/// A tenant module's monthly usage and cost (as the last aggregation computed them).
#[utoipa::path(get, path = "/api/tenant/{id}/modules/{module}/usage", tag = "modules", params(
        ("id" = i64, Path, description = "tenant id"), ("module" = String, Path, description = "module slug"), UsageQuery),
    responses((status = 200, body = ModuleUsage, description = "monthly usage"), (status = 400, body = super::error::ErrorBody),
              (status = 403, body = super::error::ErrorBody)))]
pub(super) async fn usage(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, module)): Path<(String, String)>,
    QueryArgs(query): QueryArgs<UsageQuery>,
) -> Result<Json<ModuleUsage>, ApiError> {
    let id = tenant_id(&id)?;
    caller.may_manage_tenant(id)?;
    let month = query
        .month
        .as_deref()
        .map(|m| {
            crate::store::data::parse_month(m)
                .ok_or_else(|| ApiError::bad_request(format!("month `{m}` is not YYYY-MM")))
        })
        .transpose()?;
    let months = state
        .store
        .monthly_costs(&crate::store::data::CostFilter {
            month,
            tenant: Some(id),
            module: Some(module.clone()),
        })
        .await?;
    Ok(Json(ModuleUsage {
        tenant_id: id,
        module,
        months,
    }))
}

/// The body of `PUT /api/catalog/{module}/maturity`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetMaturity {
    /// PLANNED … GA, MAINTENANCE, DEPRECATED, RETIRED.
    pub maturity: String,
    /// RETIRED by policy: tenants still using the module are SUSPENDED.
    #[serde(default)]
    pub force: bool,
}

/// Move a catalog module's maturity; DEPRECATED or RETIRED fires the deprecation webhooks.
#[utoipa::path(put, path = "/api/catalog/{module}/maturity", tag = "catalog", request_body = SetMaturity,
    params(("module" = String, Path, description = "module slug")),
    responses((status = 200, body = MaturityMoved, description = "moved"), (status = 400, body = super::error::ErrorBody),
              (status = 403, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
              (status = 422, body = super::error::ErrorBody)))]
pub(super) async fn set_maturity(
    State(state): State<AppState>,
    caller: Caller,
    Path(module): Path<String>,
    JsonBody(body): JsonBody<SetMaturity>,
) -> Result<Json<MaturityMoved>, ApiError> {
    let to: Maturity = body.maturity.parse()?;
    let (from, run) = lifecycle(&state)?
        .set_maturity(&module, to, body.force, &caller.actor())
        .await?;
    Ok(Json(MaturityMoved {
        module,
        from,
        to,
        run,
    }))
}

/// The body of `POST /api/plans/{plan}/modules`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddPlanModule {
    pub module: String,
}

/// Add a module to a plan and sync it to the plan's active subscribers.
#[utoipa::path(post, path = "/api/plans/{plan}/modules", tag = "catalog", request_body = AddPlanModule,
    params(("plan" = String, Path, description = "plan slug")),
    responses((status = 200, body = PlanModuleAdded, description = "per-plan summary of tenants synced"), (status = 400, body = super::error::ErrorBody),
              (status = 403, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
              (status = 422, body = super::error::ErrorBody)))]
pub(super) async fn plan_add(
    State(state): State<AppState>,
    caller: Caller,
    Path(plan): Path<String>,
    JsonBody(body): JsonBody<AddPlanModule>,
) -> Result<Json<PlanModuleAdded>, ApiError> {
    let (added, synced) = lifecycle(&state)?
        .plan_add_module(&plan, &body.module, &caller.actor())
        .await?;
    Ok(Json(PlanModuleAdded {
        plan,
        added,
        synced,
    }))
}

// ---------------------------------------------------------------------------------------------
// What the module and catalog routes answer (typed, so the OpenAPI document describes them).

/// A module of `GET /api/modules`; `listing` says how a tenant's marketplace shows it (only
/// when the catalog is a tenant's).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CatalogModule {
    #[serde(flatten)]
    pub module: crate::store::domain::ModuleRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listing: Option<crate::domain::availability::Listing>,
}

/// `GET /api/modules`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CatalogAnswer {
    /// The tenant whose catalog this is (none: the whole catalog).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<i64>,
    pub modules: Vec<CatalogModule>,
}

/// `GET /api/tenant/{id}/modules`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantModules {
    pub modules: Vec<TenantModuleRecord>,
}

/// `POST /api/tenant/{id}/modules`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModuleRequested {
    pub module: TenantModuleRecord,
    /// The provisioning run, when the request was admitted without approval.
    pub run: Option<RunId>,
    /// Shown to the tenant (BETA, MAINTENANCE).
    pub warning: Option<String>,
}

/// `PATCH /api/tenant/{id}/modules/{module}`: what changed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModuleChangeAnswer {
    /// The module after a state change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<TenantModuleRecord>,
    /// The archive run, for ARCHIVED.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<RunId>,
    /// After a settings change: the settings before and after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_settings: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings: Option<Value>,
}

/// `POST /api/tenant/{id}/modules/{module}/{action}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModuleOperated {
    pub module: TenantModuleRecord,
    /// The provisioning run an approval started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<RunId>,
    /// What a repair did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repaired: Option<Vec<String>>,
}

impl ModuleOperated {
    fn of(module: TenantModuleRecord) -> Self {
        Self {
            module,
            run: None,
            repaired: None,
        }
    }

    fn with_run(self, run: RunId) -> Self {
        Self {
            run: Some(run),
            ..self
        }
    }
}

/// `GET /api/tenant/{id}/audit`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantAudit {
    pub tenant_id: i64,
    pub audit: Vec<crate::store::domain::AuditRecord>,
}

/// `POST /api/catalog/{module}/upgrade`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UpgradeStarted {
    pub module: String,
    pub version: String,
    pub run: RunId,
}

/// `POST /api/catalog/{module}/rollback`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RolledBack {
    pub module: String,
    pub tenants: Vec<i64>,
}

/// `GET /api/tenant/{id}/modules/{module}/usage`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModuleUsage {
    pub tenant_id: i64,
    pub module: String,
    pub months: Vec<crate::store::data::MonthlyCost>,
}

/// `PUT /api/catalog/{module}/maturity`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MaturityMoved {
    pub module: String,
    pub from: Maturity,
    pub to: Maturity,
    /// The deprecation run (DEPRECATED, RETIRED).
    pub run: Option<RunId>,
}

/// `POST /api/plans/{plan}/modules`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlanModuleAdded {
    pub plan: String,
    /// False when the module was in the plan already (the sync ran all the same).
    pub added: bool,
    pub synced: Vec<crate::store::domain::PlanSynced>,
}
