//! The OpenAPI document of the API, generated from the handlers' annotations (utoipa) and
//! served, without a token, at `/openapi.json`. The test command validates it
//! (openapi-spec-validator) and fuzzes the API from it (schemathesis).
//!
//! [`Conventions`] finishes what the annotations leave implicit: every operation's id is
//! `<tag>_<handler>` (handlers of different tags share names: `list`, `show`, `act`) and
//! every response without a description gets its status's reason phrase.

use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

#[derive(OpenApi)]
#[openapi(
    info(title = "steward", description = "Durable job queue and workflow orchestrator: the trigger API."),
    paths(
        super::jobs::list, super::jobs::show, super::jobs::act, super::jobs::bulk,
        super::runs::start, super::runs::list, super::runs::show, super::runs::act,
        super::runs::signal,
        super::modules::catalog, super::modules::tenant_modules, super::modules::request,
        super::modules::change, super::modules::usage, super::modules::set_maturity,
        super::modules::plan_add, super::modules::operate, super::modules::audit,
        super::modules::upgrade, super::modules::rollback,
        super::queues::list, super::queues::show, super::queues::act, super::queues::workers,
        super::queues::breakers,
        super::enqueue::enqueue, super::usage::record,
        super::health, super::metrics, document,
    ),
    components(schemas(super::error::ErrorBody)),
    modifiers(&BearerAuth, &Conventions),
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

struct Conventions;

impl utoipa::Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let tag = operation
                    .tags
                    .as_ref()
                    .and_then(|tags| tags.first())
                    .cloned()
                    .unwrap_or_default();
                if let Some(id) = &operation.operation_id
                    && !tag.is_empty()
                    && !id.starts_with(&format!("{tag}_"))
                {
                    operation.operation_id = Some(format!("{tag}_{id}"));
                }
                for (status, response) in operation.responses.responses.iter_mut() {
                    if let RefOr::T(response) = response
                        && response.description.is_empty()
                    {
                        response.description = status
                            .parse::<u16>()
                            .ok()
                            .and_then(|code| axum::http::StatusCode::from_u16(code).ok())
                            .and_then(|code| code.canonical_reason())
                            .unwrap_or("response")
                            .to_string();
                    }
                }
            }
        }
    }
}

/// `GET /openapi.json`, for anyone: it describes the API, not its data.
#[utoipa::path(get, path = "/openapi.json", tag = "monitoring", security(()),
    responses((status = 200, body = Object, description = "this document (OpenAPI 3.1)")))]
pub(super) async fn document() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every success answer is typed: a client generated from the document knows its shape.
    #[test]
    fn every_2xx_response_has_a_schema() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut untyped = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for (status, response) in operation["responses"].as_object().unwrap() {
                    let typed = response["content"].as_object().is_some_and(|c| {
                        !c.is_empty() && c.values().all(|m| !m["schema"].is_null())
                    });
                    if status.starts_with('2') && !typed {
                        untyped.push(format!("{method} {path} {status}"));
                    }
                }
            }
        }
        assert!(
            untyped.is_empty(),
            "2xx answers without a schema: {untyped:#?}"
        );
    }

    /// The document describes every route the API serves (the dashboard's HTML pages are not
    /// API), and nothing it does not serve.
    #[test]
    fn the_document_describes_every_route_served() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut described: Vec<(String, String)> = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                described.push((method.to_uppercase(), path.clone()));
            }
        }
        described.sort();
        let mut served: Vec<(String, String)> = crate::api::routes()
            .served()
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        served.sort();
        assert_eq!(described, served);
    }

    /// Every request body is typed, and the writes that take none are exactly the actions
    /// named by their path (retry, cancel, pause…), which read nothing but the path and query.
    #[test]
    fn every_request_body_has_a_schema() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut untyped = Vec::new();
        let mut bodiless = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let body = &operation["requestBody"];
                if body.is_null() {
                    if method != "get" {
                        bodiless.push(format!("{method} {path}"));
                    }
                } else if body["content"]["application/json"]["schema"].is_null() {
                    untyped.push(format!("{method} {path}"));
                }
            }
        }
        assert!(
            untyped.is_empty(),
            "request bodies without a schema: {untyped:#?}"
        );
        bodiless.sort();
        assert_eq!(
            bodiless,
            [
                "post /api/catalog/{module}/rollback",
                "post /api/jobs/{id}/{action}",
                "post /api/queues/{queue}/{action}",
                "post /api/runs/{id}/{action}",
            ]
        );
    }
}
