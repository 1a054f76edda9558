//! The OpenAPI document of the API, generated from the handlers' annotations (utoipa) and
//! served at `/openapi.json`. The fuzz run of the test command (schemathesis) reads it.

use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

#[derive(OpenApi)]
#[openapi(
    info(title = "steward", description = "Durable job queue and workflow orchestrator: the trigger API."),
    paths(
        super::jobs::list, super::jobs::show, super::jobs::act, super::jobs::bulk,
        super::runs::start, super::runs::list, super::runs::show, super::runs::act,
        super::modules::catalog, super::modules::tenant_modules, super::modules::request,
        super::modules::change, super::modules::usage, super::modules::set_maturity,
        super::modules::plan_add, super::modules::operate, super::modules::audit,
        super::modules::upgrade, super::modules::rollback,
    ),
    components(schemas(super::error::ErrorBody)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// `GET /openapi.json` (for any authenticated caller: only `/health` is anonymous).
pub(super) async fn document(_caller: super::auth::Caller) -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}
