//! The OpenAPI 3.1 document of the API, generated from the handlers'
//! `#[utoipa::path]` annotations and the types they answer with, and served
//! at `GET /openapi.json`.
//!
//! What every operation shares is added by [`conventions`] rather than
//! repeated on each handler: `x-request-id` on every response; on `/v1/`
//! operations 500 `internal` and 503 `unavailable` (with `Retry-After`);
//! on operations that take a token, 401 `unauthorized` (with
//! `WWW-Authenticate`) and, where only the admin token will do, 403
//! `forbidden`. utoipa cannot mark a response header required, so the
//! headers always sent are marked there too.

use super::error::{PROBLEM_JSON, Problem, ProblemCode};
use super::{AppState, holds, ops, skus};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, Value, json};
use std::sync::OnceLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "dropgate",
        description = "Flash-sale gatekeeper: storefronts pre-reserve units (holds) at a gate \
            in Redis, then confirm, release or extend them; Postgres keeps the ledger. \
            Every error is `application/problem+json` (RFC 9457) with a stable `code`."
    ),
    paths(
        holds::admit,
        holds::show,
        holds::confirm,
        holds::release,
        holds::extend,
        skus::show,
        skus::put,
        skus::adjust,
        skus::list,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        openapi_json,
        dashboard_page,
        dashboard_script,
        dashboard_style,
        dashboard_figures,
    ),
    components(schemas(Problem, ProblemCode)),
    modifiers(&BearerTokens),
    tags(
        (name = "holds", description = "Storefront: admit, read, confirm, release and extend holds"),
        (name = "skus", description = "SKUs: read (storefront); create, update, adjust and list (admin)"),
        (name = "operations", description = "No token: health, readiness, metrics, this document, the dashboard"),
    )
)]
struct ApiDoc;

/// The two bearer tokens: storefront endpoints take either.
struct BearerTokens;

impl Modify for BearerTokens {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, what) in [
            (
                "storefront",
                "A storefront token (`DROPGATE_STOREFRONT_TOKENS`)",
            ),
            ("admin", "The admin token (`DROPGATE_ADMIN_TOKEN`)"),
        ] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(what))
                        .build(),
                ),
            );
        }
    }
}

/// The document, built once.
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        conventions(&mut doc);
        doc
    })
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1", body = Object, content_type = "application/json"))
)]
async fn openapi_json() -> Json<&'static Value> {
    Json(document())
}

/// Adds what every operation shares; see the module documentation.
fn conventions(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for operation in item.values_mut() {
            let Some(operation) = operation.as_object_mut() else {
                continue;
            };
            let schemes = security_schemes(operation);
            let Some(responses) = operation
                .entry("responses")
                .or_insert_with(|| json!({}))
                .as_object_mut()
            else {
                continue;
            };
            if !schemes.is_empty() {
                responses.entry("401").or_insert_with(|| {
                    problem(
                        "`unauthorized`: missing or unknown bearer token",
                        &[("WWW-Authenticate", "`Bearer`")],
                    )
                });
                if !schemes.iter().any(|s| s == "storefront") {
                    responses.entry("403").or_insert_with(|| {
                        problem("`forbidden`: a storefront token on an admin endpoint", &[])
                    });
                }
            }
            if path.starts_with("/v1/") && path != "/v1/dashboard" {
                responses.entry("500").or_insert_with(|| {
                    problem(
                        "`internal`: logged with the request id; the body says no more",
                        &[],
                    )
                });
                responses.entry("503").or_insert_with(|| {
                    problem(
                        "`unavailable`: Redis or Postgres unreachable for this operation, or the request ran over 10 s",
                        &[("Retry-After", "Seconds to wait before retrying")],
                    )
                });
            }
            for (status, response) in responses.iter_mut() {
                let Some(response) = response.as_object_mut() else {
                    continue;
                };
                camel_case_links(response);
                let headers = response
                    .entry("headers")
                    .or_insert_with(|| json!({}))
                    .as_object_mut();
                let Some(headers) = headers else { continue };
                headers.insert(
                    "x-request-id".into(),
                    json!({
                        "description": "The request's `x-request-id` echoed, or a fresh UUID; logs carry it",
                        "schema": {"type": "string"},
                    }),
                );
                for (name, header) in headers.iter_mut() {
                    if let Some(header) = header.as_object_mut() {
                        if header_required(status, name) {
                            header.insert("required".into(), Value::Bool(true));
                        }
                        if name == "Retry-After" {
                            header.insert("schema".into(), retry_after_schema());
                        }
                        if name == "Idempotent-Replayed" {
                            header.insert(
                                "schema".into(),
                                json!({"type": "string", "enum": ["true"]}),
                            );
                        }
                    }
                }
            }
        }
    }
}

/// utoipa 5 writes a Link Object's fields in snake_case (`operation_id`);
/// OpenAPI spells them `operationId`, `operationRef`, `requestBody`.
fn camel_case_links(response: &mut Map<String, Value>) {
    let links = response
        .get_mut("links")
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|links| links.values_mut())
        .filter_map(Value::as_object_mut);
    for link in links {
        for (snake, camel) in [
            ("operation_id", "operationId"),
            ("operation_ref", "operationRef"),
            ("request_body", "requestBody"),
        ] {
            if let Some(value) = link.remove(snake) {
                link.insert(camel.to_owned(), value);
            }
        }
    }
}

/// The security schemes an operation accepts, if any.
fn security_schemes(operation: &Map<String, Value>) -> Vec<String> {
    operation
        .get("security")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .flat_map(|requirement| requirement.keys().cloned())
        .collect()
}

/// Headers sent with every response of this status.
fn header_required(status: &str, name: &str) -> bool {
    match name {
        "x-request-id" | "Location" | "WWW-Authenticate" => true,
        // On 409 `sold_out` only while holds may still free units.
        "Retry-After" => status == "429" || status == "503",
        _ => false,
    }
}

fn retry_after_schema() -> Value {
    json!({"type": "integer", "minimum": 1})
}

/// A problem+json response.
fn problem(description: &str, headers: &[(&str, &str)]) -> Value {
    let headers: Map<String, Value> = headers
        .iter()
        .map(|(name, description)| {
            let schema = if *name == "Retry-After" {
                retry_after_schema()
            } else {
                json!({"type": "string"})
            };
            (
                (*name).to_owned(),
                json!({"description": description, "schema": schema}),
            )
        })
        .collect();
    json!({
        "description": description,
        "headers": headers,
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    })
}

// The dashboard (src/http/dashboard.rs) as documented: its handlers and
// types live there; these mirror them for the document.

/// The operators' live dashboard page; it polls `GET /v1/dashboard`.
#[utoipa::path(
    get,
    path = "/",
    operation_id = "dashboard_page",
    tag = "operations",
    responses((status = 200, description = "HTML page", body = String, content_type = "text/html"))
)]
#[allow(dead_code)]
fn dashboard_page() {}

/// The dashboard's script.
#[utoipa::path(
    get,
    path = "/dashboard.js",
    operation_id = "dashboard_script",
    tag = "operations",
    responses((status = 200, description = "JavaScript", body = String, content_type = "text/javascript"))
)]
#[allow(dead_code)]
fn dashboard_script() {}

/// The dashboard's style sheet.
#[utoipa::path(
    get,
    path = "/dashboard.css",
    operation_id = "dashboard_style",
    tag = "operations",
    responses((status = 200, description = "CSS", body = String, content_type = "text/css"))
)]
#[allow(dead_code)]
fn dashboard_style() {}

/// The dashboard's figures: stock per SKU from the gate and the ledger,
/// admissions by outcome, commit lag, backlog, drift, store health. A
/// store that does not answer degrades to `unreachable` and null figures.
#[utoipa::path(
    get,
    path = "/v1/dashboard",
    operation_id = "dashboard_figures",
    tag = "operations",
    responses((status = 200, description = "The figures", body = super::dashboard::Dashboard))
)]
#[allow(dead_code)]
fn dashboard_figures() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_openapi_3_1_with_every_shared_response() {
        let doc = document();
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1"))
        );
        let admit = &doc["paths"]["/v1/skus/{sku}/holds"]["post"]["responses"];
        for status in [
            "201", "400", "401", "404", "409", "413", "422", "429", "500", "503",
        ] {
            assert!(admit.get(status).is_some(), "{status}");
        }
        assert_eq!(admit["201"]["headers"]["Location"]["required"], true);
        assert_eq!(admit["429"]["headers"]["Retry-After"]["required"], true);
        assert!(
            admit["409"]["headers"]["Retry-After"]
                .get("required")
                .is_none()
        );
        assert!(admit.get("403").is_none(), "storefront tokens may admit");
        let put = &doc["paths"]["/v1/skus/{sku}"]["put"]["responses"];
        assert!(put.get("403").is_some());
        assert_eq!(
            admit["201"]["links"]["ConfirmHold"]["operationId"],
            "confirm_hold"
        );
        let health = &doc["paths"]["/healthz"]["get"]["responses"];
        assert!(health.get("401").is_none());
        assert_eq!(health["200"]["headers"]["x-request-id"]["required"], true);
    }
}
