//! The seed's module endpoints: the catalog, a tenant's modules (request one, change its
//! state or settings, read its usage), a catalog maturity change (fires the deprecation
//! webhooks) and a plan module change (fires the plan sync).

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, JsonBody, QueryArgs};
use crate::domain::maturity::Maturity;
use crate::domain::status::TenantModuleStatus;
use crate::lifecycle::Lifecycle;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

fn lifecycle(state: &AppState) -> Result<&Lifecycle, ApiError> {
    state.lifecycle.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the module lifecycle workflows are not defined here (workflows/)",
        )
    })
}

fn tenant_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::bad_request(format!("`{raw}` is not a tenant id")))
}

fn actor(caller: &Caller) -> String {
    format!("api:{}", caller.0.sub)
}

/// The catalog: every module with its maturity.
#[utoipa::path(get, path = "/api/modules", tag = "modules",
    responses((status = 200, description = "the modules")))]
pub(super) async fn catalog(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let modules = state.store.modules_list().await?;
    Ok(Json(json!({ "modules": modules })))
}

/// A tenant's modules.
#[utoipa::path(get, path = "/api/tenant/{id}/modules", tag = "modules",
    params(("id" = i64, Path, description = "tenant id")),
    responses((status = 200, description = "the tenant's modules"), (status = 400, body = super::error::ErrorBody),
              (status = 403, body = super::error::ErrorBody)))]
pub(super) async fn tenant_modules(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = tenant_id(&id)?;
    caller.may_manage_tenant(id)?;
    let modules = state.store.tenant_modules(id).await?;
    Ok(Json(json!({ "modules": modules })))
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
    responses((status = 201, description = "requested"), (status = 400, body = super::error::ErrorBody),
              (status = 403, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
              (status = 422, body = super::error::ErrorBody)))]
pub(super) async fn request(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RequestModule>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = tenant_id(&id)?;
    caller.may_manage_tenant(id)?;
    let requested = lifecycle(&state)?
        .request(id, &body.module, &actor(&caller))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "module": requested.module,
            "run": requested.run,
            "warning": requested.warning,
        })),
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
    #[schema(value_type = Option<Object>)]
    pub settings: Option<Value>,
}

/// Change a tenant module's state or settings.
#[utoipa::path(patch, path = "/api/tenant/{id}/modules/{module}", tag = "modules", request_body = ChangeModule,
    params(("id" = i64, Path, description = "tenant id"), ("module" = String, Path, description = "module slug")),
    responses((status = 200, description = "changed"), (status = 400, body = super::error::ErrorBody),
              (status = 403, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
              (status = 422, body = super::error::ErrorBody)))]
pub(super) async fn change(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, module)): Path<(String, String)>,
    JsonBody(body): JsonBody<ChangeModule>,
) -> Result<Json<Value>, ApiError> {
    let id = tenant_id(&id)?;
    caller.may_manage_tenant(id)?;
    let lifecycle = lifecycle(&state)?;
    let actor = actor(&caller);
    if body.state.is_none() && body.settings.is_none() {
        return Err(ApiError::bad_request("give a state, settings, or both"));
    }
    let current = state
        .store
        .tenant_module_get(id, &module)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("tenant {id} has no module `{module}`")))?;
    let mut answer = json!({});
    if let Some(settings) = &body.settings {
        validate_settings(&state, &current, settings).await?;
        let previous = state
            .store
            .settings_set(id, &module, settings, &actor)
            .await?;
        answer["previous_settings"] = previous;
        answer["settings"] = settings.clone();
    }
    if let Some(to) = &body.state {
        let to: TenantModuleStatus = to.parse()?;
        match to {
            TenantModuleStatus::Enabled => {
                answer["module"] = json!(lifecycle.reenable(id, &module, &actor).await?);
            }
            TenantModuleStatus::Disabled => {
                answer["module"] = json!(lifecycle.disable(id, &module, &actor).await?);
            }
            TenantModuleStatus::Archived => {
                answer["run"] = json!(lifecycle.archive(id, &module).await?);
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "a tenant module cannot be set to {other} here: ENABLED, DISABLED or ARCHIVED"
                )));
            }
        }
    }
    Ok(Json(answer))
}

/// Check `settings` against the JSON Schema of the tenant module's version (422 with every
/// violation when it does not conform).
async fn validate_settings(
    state: &AppState,
    module: &crate::store::domain::TenantModuleRecord,
    settings: &Value,
) -> Result<(), ApiError> {
    if !settings.is_object() {
        return Err(ApiError::bad_request("settings must be a JSON object"));
    }
    let versions = state.store.versions_of(&module.module).await?;
    let Some(schema) = versions
        .iter()
        .find(|v| Some(v.id) == module.version_id)
        .and_then(|v| v.settings_schema.as_ref())
    else {
        return Ok(());
    };
    let validator = jsonschema::validator_for(schema).map_err(|e| {
        ApiError::new(
            StatusCode::CONFLICT,
            "invalid_schema",
            format!(
                "the settings schema of `{}` is unusable: {e}",
                module.module
            ),
        )
    })?;
    let problems: Vec<String> = validator
        .iter_errors(settings)
        .map(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() {
                e.to_string()
            } else {
                format!("{at}: {e}")
            }
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_settings",
            problems.join("; "),
        ))
    }
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
    responses((status = 200, description = "monthly usage"), (status = 400, body = super::error::ErrorBody),
              (status = 403, body = super::error::ErrorBody)))]
pub(super) async fn usage(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, module)): Path<(String, String)>,
    QueryArgs(query): QueryArgs<UsageQuery>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(
        json!({"tenant_id": id, "module": module, "months": months}),
    ))
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
    responses((status = 200, description = "moved"), (status = 400, body = super::error::ErrorBody),
              (status = 403, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
              (status = 422, body = super::error::ErrorBody)))]
pub(super) async fn set_maturity(
    State(state): State<AppState>,
    caller: Caller,
    Path(module): Path<String>,
    JsonBody(body): JsonBody<SetMaturity>,
) -> Result<Json<Value>, ApiError> {
    caller.may_administer()?;
    let to: Maturity = body.maturity.parse()?;
    let (from, run) = lifecycle(&state)?
        .set_maturity(&module, to, body.force, &actor(&caller))
        .await?;
    Ok(Json(
        json!({"module": module, "from": from, "to": to, "run": run}),
    ))
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
    responses((status = 200, description = "per-plan summary of tenants synced"), (status = 400, body = super::error::ErrorBody),
              (status = 403, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
              (status = 422, body = super::error::ErrorBody)))]
pub(super) async fn plan_add(
    State(state): State<AppState>,
    caller: Caller,
    Path(plan): Path<String>,
    JsonBody(body): JsonBody<AddPlanModule>,
) -> Result<Json<Value>, ApiError> {
    caller.may_administer()?;
    let synced = lifecycle(&state)?
        .plan_add_module(&plan, &body.module, &actor(&caller))
        .await?;
    Ok(Json(json!({"plan": plan, "synced": synced})))
}
