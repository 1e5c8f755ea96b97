//! `GET /openapi.json`: an OpenAPI 3.1 document of the whole contract
//! (shared/API.md), served without a token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::spawn_app;
use serde_json::Value;

/// Every endpoint of the contract, as (method, path).
const ENDPOINTS: [(&str, &str); 15] = [
    ("post", "/v1/skus/{sku}/holds"),
    ("get", "/v1/holds/{hold_id}"),
    ("post", "/v1/holds/{hold_id}/confirm"),
    ("post", "/v1/holds/{hold_id}/release"),
    ("post", "/v1/holds/{hold_id}/extend"),
    ("get", "/v1/skus/{sku}"),
    ("put", "/v1/skus/{sku}"),
    ("post", "/v1/skus/{sku}/adjustments"),
    ("get", "/v1/skus"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/"),
    ("get", "/v1/dashboard"),
];

/// Every problem code of the contract's table, and `conflict` of `PUT /v1/skus/{sku}`.
const CODES: [&str; 20] = [
    "unauthorized",
    "forbidden",
    "validation",
    "malformed",
    "payload_too_large",
    "idempotency_key_missing",
    "idempotency_key_reused",
    "not_found",
    "sold_out",
    "limit_exceeded",
    "rate_limited",
    "hold_expired",
    "hold_released",
    "hold_confirmed",
    "hold_lost",
    "extension_limit",
    "unavailable",
    "conflict",
    "method_not_allowed",
    "internal",
];

async fn document() -> Value {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(response.status(), 200, "served without a token");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let doc = response.json().await.expect("JSON");
    app.stop().await;
    doc
}

fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    let operation = &doc["paths"][path][method];
    assert!(operation.is_object(), "{method} {path} is not documented");
    operation
}

fn security(operation: &Value) -> Vec<String> {
    let mut schemes: Vec<String> = operation["security"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .flat_map(|requirement| requirement.keys().cloned())
        .collect();
    schemes.sort();
    schemes
}

#[tokio::test]
async fn the_document_covers_the_whole_contract() {
    let doc = document().await;
    let version = doc["openapi"].as_str().unwrap_or("");
    assert!(version.starts_with("3.1"), "openapi is {version:?}");

    for (method, path) in ENDPOINTS {
        let operation = operation(&doc, method, path);
        let responses = operation["responses"].as_object().expect("responses");
        assert!(
            responses.keys().any(|status| status.starts_with('2')),
            "{method} {path} documents no success"
        );
        // Every problem is problem+json, with the Problem schema.
        for (status, response) in responses {
            if let Some(problem) = response["content"].get("application/problem+json") {
                assert_eq!(
                    problem["schema"]["$ref"], "#/components/schemas/Problem",
                    "{method} {path} {status}"
                );
            }
            if status.starts_with('4') || status.starts_with('5') {
                let is_readyz = path == "/readyz";
                assert!(
                    is_readyz
                        || response["content"]
                            .get("application/problem+json")
                            .is_some(),
                    "{method} {path} {status} is not problem+json"
                );
            }
            assert_eq!(
                response["headers"]["x-request-id"]["required"], true,
                "{method} {path} {status} names x-request-id"
            );
        }
    }

    let codes: Vec<&str> = doc["components"]["schemas"]["ProblemCode"]["enum"]
        .as_array()
        .expect("the ProblemCode enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for code in CODES {
        assert!(codes.contains(&code), "{code} is missing from {codes:?}");
    }
    let problem = &doc["components"]["schemas"]["Problem"];
    for field in ["type", "title", "status", "detail", "code"] {
        assert!(
            problem["required"]
                .as_array()
                .is_some_and(|r| r.iter().any(|f| f == field)),
            "Problem.{field} is required"
        );
    }
    for field in ["errors", "state", "per_customer_limit", "already_taken"] {
        assert!(
            problem["properties"].get(field).is_some(),
            "Problem.{field}"
        );
    }
}

#[tokio::test]
async fn tokens_headers_and_bodies_are_documented() {
    let doc = document().await;
    let schemes = &doc["components"]["securitySchemes"];
    for name in ["storefront", "admin"] {
        assert_eq!(schemes[name]["type"], "http", "{name}");
        assert_eq!(schemes[name]["scheme"], "bearer", "{name}");
    }
    for (method, path) in &ENDPOINTS[..6] {
        let operation = operation(&doc, method, path);
        assert_eq!(
            security(operation),
            ["admin", "storefront"],
            "{method} {path}"
        );
        assert!(
            operation["responses"].get("401").is_some(),
            "{method} {path}"
        );
        assert!(
            operation["responses"].get("403").is_none(),
            "{method} {path}"
        );
    }
    for (method, path) in &ENDPOINTS[6..9] {
        let operation = operation(&doc, method, path);
        assert_eq!(security(operation), ["admin"], "{method} {path}");
        assert!(
            operation["responses"].get("403").is_some(),
            "{method} {path}"
        );
    }
    for (method, path) in &ENDPOINTS[9..] {
        assert!(
            security(operation(&doc, method, path)).is_empty(),
            "{method} {path} takes no token"
        );
    }

    let admit = operation(&doc, "post", "/v1/skus/{sku}/holds");
    let key = admit["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .find(|p| p["name"] == "Idempotency-Key")
        .expect("the Idempotency-Key parameter");
    assert_eq!(key["in"], "header");
    assert_eq!(key["required"], true);
    assert_eq!(key["schema"]["maxLength"], 255);
    let created = &admit["responses"]["201"];
    assert_eq!(created["headers"]["Location"]["required"], true);
    assert!(created["headers"].get("Idempotent-Replayed").is_some());
    assert!(
        admit["responses"]["409"]["headers"]
            .get("Retry-After")
            .is_some()
    );
    assert_eq!(
        admit["responses"]["429"]["headers"]["Retry-After"]["required"],
        true
    );
    for status in ["400", "404", "409", "413", "422", "429", "503"] {
        assert!(admit["responses"].get(status).is_some(), "admit {status}");
    }

    let schemas = &doc["components"]["schemas"];
    let admit_body = &schemas["AdmitRequest"]["properties"];
    assert_eq!(admit_body["customer_id"]["maxLength"], 128);
    assert_eq!(admit_body["quantity"]["minimum"], 1);
    assert_eq!(admit_body["quantity"]["maximum"], 1000);
    let put_body = &schemas["PutSkuRequest"];
    assert_eq!(put_body["required"], serde_json::json!(["on_hand"]));
    assert_eq!(put_body["properties"]["hold_ttl_ms"]["minimum"], 1000);
    assert_eq!(put_body["properties"]["hold_ttl_ms"]["maximum"], 86_400_000);
    assert_eq!(put_body["properties"]["max_extensions"]["maximum"], 10);
    let adjustment = &schemas["AdjustmentRequest"]["properties"];
    assert_eq!(adjustment["reason"]["maxLength"], 500);

    let hold = &schemas["Hold"]["properties"];
    for field in [
        "hold_id",
        "sku",
        "customer_id",
        "quantity",
        "state",
        "expires_at",
        "durable",
    ] {
        assert!(hold.get(field).is_some(), "Hold.{field}");
    }
    assert_eq!(hold["expires_at"]["format"], "date-time");
    let states: Vec<&str> = schemas["HoldState"]["enum"]
        .as_array()
        .expect("HoldState")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(states, ["held", "confirmed", "released", "expired", "lost"]);
    let sku = &schemas["Sku"]["properties"];
    for field in [
        "sku",
        "on_hand",
        "available",
        "held",
        "sold",
        "per_customer_limit",
        "hold_ttl_ms",
        "max_extensions",
    ] {
        assert!(sku.get(field).is_some(), "Sku.{field}");
    }

    let metrics = operation(&doc, "get", "/metrics");
    assert!(
        metrics["responses"]["200"]["content"]
            .get("text/plain")
            .is_some()
    );
    let page = operation(&doc, "get", "/");
    assert!(
        page["responses"]["200"]["content"]
            .get("text/html")
            .is_some()
    );
}
