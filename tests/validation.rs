//! Authentication, validation and the shape of every error, black-box over
//! HTTP: a bad request gets the contract's problem+json, names what is
//! wrong, leaks nothing about the server and changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ADMIN, STOREFRONT, TestApp, spawn_app};
use dropgate::domain::{HoldId, HoldIdKey, Quantity};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

/// The SKU every test creates, with `ON_HAND` units.
const SKU: &str = "drop";
const ON_HAND: i64 = 10;
/// The other storefront token of the harness's configuration.
const SECOND_STOREFRONT: &str = "second-storefront-token";
/// Text no answer may contain: SQL, store internals, panics, stack traces.
const LEAKS: &[&str] = &[
    "SELECT",
    "redis",
    "Redis",
    "sqlx",
    "panicked",
    "backtrace",
    "stack",
    ".rs:",
];
/// A well-formed UUID (version 4) that dropgate never issues.
const V4_HOLD: &str = "4b0c6f5e-2d4a-4c1b-9f3e-8a7d6c5b4a39";

// ---------------------------------------------------------------------------
// Requests as data, so tables of cases stay short.

#[derive(Clone)]
enum Body {
    Empty,
    Json(Value),
    Raw {
        content_type: Option<&'static str>,
        text: String,
    },
}

/// One request: method, path, Authorization header, Idempotency-Key, body
/// and any extra headers.
#[derive(Clone)]
struct Req {
    method: Method,
    path: String,
    authorization: Option<String>,
    key: Option<String>,
    body: Body,
    headers: Vec<(&'static str, String)>,
}

impl Req {
    fn new(method: Method, path: impl Into<String>, token: &str) -> Self {
        Self {
            method,
            path: path.into(),
            authorization: Some(bearer(token)),
            key: None,
            body: Body::Empty,
            headers: Vec::new(),
        }
    }

    /// Replaces the Authorization header (`None` sends none).
    fn authorization(mut self, value: Option<&str>) -> Self {
        self.authorization = value.map(str::to_owned);
        self
    }

    /// Sends `Authorization: Bearer <token>`.
    fn token(self, token: &str) -> Self {
        self.authorization(Some(&bearer(token)))
    }

    fn key(mut self, key: Option<&str>) -> Self {
        self.key = key.map(str::to_owned);
        self
    }

    fn json(mut self, body: Value) -> Self {
        self.body = Body::Json(body);
        self
    }

    fn raw(mut self, content_type: Option<&'static str>, text: impl Into<String>) -> Self {
        self.body = Body::Raw {
            content_type,
            text: text.into(),
        };
        self
    }

    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    /// The same JSON body, sent as `text/plain`.
    fn plain_text(self) -> Self {
        let text = self.json_body().to_string();
        self.raw(Some("text/plain"), text)
    }

    /// The same JSON body padded with a field to over 20,000 bytes.
    fn padded(self) -> Self {
        let mut body = self.json_body();
        body["padding"] = json!("p".repeat(20_000));
        assert!(body.to_string().len() > 20_000);
        self.json(body)
    }

    /// The JSON body this request carries, if any.
    fn json_body(&self) -> Value {
        match &self.body {
            Body::Json(body) => body.clone(),
            _ => json!({}),
        }
    }

    fn describe(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    fn build(&self, app: &TestApp) -> reqwest::RequestBuilder {
        let mut request = app.client.request(self.method.clone(), app.url(&self.path));
        if let Some(value) = &self.authorization {
            request = request.header("authorization", value);
        }
        if let Some(key) = &self.key {
            request = request.header("idempotency-key", key);
        }
        for (name, value) in &self.headers {
            request = request.header(*name, value);
        }
        match &self.body {
            Body::Empty => request,
            Body::Json(body) => request.json(body),
            Body::Raw { content_type, text } => match content_type {
                Some(content_type) => request.header("content-type", *content_type),
                None => request,
            }
            .body(text.clone()),
        }
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn hold_request() -> Value {
    json!({"customer_id": "c-1", "quantity": 1})
}

/// `POST /v1/skus/{sku}/holds` as a storefront, with a key and a good body.
fn admit(sku: &str) -> Req {
    Req::new(Method::POST, format!("/v1/skus/{sku}/holds"), STOREFRONT)
        .key(Some("k-1"))
        .json(hold_request())
}

/// `GET /v1/skus/{sku}` as a storefront.
fn get_sku(sku: &str) -> Req {
    Req::new(Method::GET, format!("/v1/skus/{sku}"), STOREFRONT)
}

/// `PUT /v1/skus/{sku}` as the admin, with a body that would change the SKU.
fn put_sku(sku: &str) -> Req {
    Req::new(Method::PUT, format!("/v1/skus/{sku}"), ADMIN).json(json!({"on_hand": 99}))
}

/// `POST /v1/skus/{sku}/adjustments` as the admin, with a good body.
fn adjust(sku: &str) -> Req {
    Req::new(Method::POST, format!("/v1/skus/{sku}/adjustments"), ADMIN)
        .json(json!({"delta": 5, "reason": "recount"}))
}

/// `GET /v1/skus` as the admin.
fn list_skus() -> Req {
    Req::new(Method::GET, "/v1/skus", ADMIN)
}

/// `GET /v1/holds/{id}` (`action` None) or `POST /v1/holds/{id}/{action}`.
fn on_hold(hold: &str, action: Option<&str>) -> Req {
    match action {
        None => Req::new(Method::GET, format!("/v1/holds/{hold}"), STOREFRONT),
        Some(action) => Req::new(
            Method::POST,
            format!("/v1/holds/{hold}/{action}"),
            STOREFRONT,
        ),
    }
}

/// An id shaped like dropgate's (UUID version 8): serial `serial`, SKU
/// number `sku_no`, one unit, but signed with a key that is not this
/// ledger's, so never issued.
fn forged_hold(serial: u64, sku_no: u32) -> String {
    let quantity = Quantity::parse(1).expect("a quantity");
    HoldId::issue(&HoldIdKey::new(b"a guess"), serial, sku_no, quantity).to_string()
}

/// The four hold endpoints for one hold id.
fn hold_endpoints(hold: &str) -> Vec<Req> {
    [None, Some("confirm"), Some("release"), Some("extend")]
        .into_iter()
        .map(|action| on_hold(hold, action))
        .collect()
}

/// Every storefront endpoint, each with a request that would succeed.
fn storefront_endpoints(hold: &str) -> Vec<Req> {
    let mut endpoints = vec![admit(SKU), get_sku(SKU)];
    endpoints.extend(hold_endpoints(hold));
    endpoints
}

/// Every admin endpoint, each with a request that would succeed.
fn admin_endpoints() -> Vec<Req> {
    vec![put_sku(SKU), adjust(SKU), list_skus()]
}

/// The endpoints with a `{sku}` in their path.
fn sku_endpoints(sku: &str) -> Vec<Req> {
    vec![admit(sku), get_sku(sku), put_sku(sku), adjust(sku)]
}

/// The endpoints that read a JSON body.
fn body_endpoints() -> Vec<Req> {
    vec![admit(SKU), put_sku(SKU), adjust(SKU)]
}

// ---------------------------------------------------------------------------
// Answers.

/// One answer, read whole.
struct Reply {
    status: u16,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("a JSON body ({e}): {}", self.text))
    }
}

/// Sends a request; every answer carries a request id and leaks nothing.
async fn send(app: &TestApp, req: &Req) -> Reply {
    let response = req
        .build(app)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", req.describe()));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a body");
    let reply = Reply {
        status,
        headers,
        text,
    };
    assert!(
        reply
            .header("x-request-id")
            .is_some_and(|id| !id.is_empty()),
        "{}: {status} without x-request-id",
        req.describe()
    );
    for leak in LEAKS {
        assert!(
            !reply.text.contains(leak),
            "{}: {status} leaks {leak:?}: {}",
            req.describe(),
            reply.text
        );
    }
    reply
}

/// Asserts a success status; returns the JSON body.
async fn ok(app: &TestApp, req: &Req, status: u16) -> Value {
    let reply = send(app, req).await;
    assert_eq!(reply.status, status, "{}: {}", req.describe(), reply.text);
    reply.json()
}

/// Asserts an RFC 9457 problem with this status; returns the body.
fn problem_shape(req: &Req, reply: &Reply, status: u16) -> Value {
    let what = req.describe();
    assert_eq!(reply.status, status, "{what}: {}", reply.text);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json"),
        "{what}"
    );
    let problem = reply.json();
    let code = problem["code"].as_str().unwrap_or_default();
    assert!(!code.is_empty(), "{what}: {problem}");
    assert_eq!(problem["type"], format!("/problems/{code}"), "{what}");
    assert_eq!(problem["status"], status, "{what}");
    assert!(
        problem["title"].as_str().is_some_and(|t| !t.is_empty()),
        "{what}: {problem}"
    );
    assert!(problem["detail"].is_string(), "{what}: {problem}");
    problem
}

/// Sends and asserts a problem with this status and `code`.
async fn problem(app: &TestApp, req: &Req, status: u16, code: &str) -> Value {
    let reply = send(app, req).await;
    let problem = problem_shape(req, &reply, status);
    assert_eq!(problem["code"], code, "{}: {problem}", req.describe());
    problem
}

/// Sends and asserts 422 `validation` naming exactly `fields`, each in
/// `detail` and in `errors` (every error a `field` and a `message`).
async fn invalid(app: &TestApp, req: &Req, fields: &[&str]) {
    let what = req.describe();
    let problem = problem(app, req, 422, "validation").await;
    let detail = problem["detail"].as_str().unwrap_or_default();
    let errors = problem["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no errors list: {problem}"));
    let mut named: Vec<&str> = errors
        .iter()
        .map(|error| {
            assert!(
                error["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{what}: {error}"
            );
            error["field"].as_str().unwrap_or_default()
        })
        .collect();
    named.sort_unstable();
    let mut expected = fields.to_vec();
    expected.sort_unstable();
    assert_eq!(named, expected, "{what}: {problem}");
    for field in fields {
        assert!(
            detail.contains(field),
            "{what}: detail lacks {field}: {detail}"
        );
    }
}

/// A body and the fields a 422 must name for it.
type Case = (Value, Vec<&'static str>);

fn case(body: Value, fields: &[&'static str]) -> Case {
    (body, fields.to_vec())
}

/// Sends `base` with each body; each must be refused naming its fields.
async fn invalid_bodies(app: &TestApp, base: &Req, cases: &[Case]) {
    for (i, (body, fields)) in cases.iter().enumerate() {
        let req = base
            .clone()
            .key(base.key.as_ref().map(|_| format!("bad-{i}")).as_deref())
            .json(body.clone());
        invalid(app, &req, fields).await;
    }
}

// ---------------------------------------------------------------------------
// Set-up and state checks.

/// An app with SKU `drop` holding `ON_HAND` units.
async fn app_with_sku() -> TestApp {
    let app = spawn_app().await;
    app.create_sku(SKU, json!({"on_hand": ON_HAND})).await;
    app
}

/// Admits one unit with this token and key; returns the hold id.
async fn new_hold(app: &TestApp, token: &str, key: &str) -> String {
    let req = admit(SKU)
        .token(token)
        .key(Some(key))
        .json(json!({"customer_id": key, "quantity": 1}));
    let hold = ok(app, &req, 201).await;
    hold["hold_id"].as_str().expect("a hold id").to_owned()
}

/// The SKU is as created: every unit available, nothing held or sold, no
/// movement beyond the creation and no hold in the ledger.
async fn assert_untouched(app: &TestApp) {
    let sku = ok(app, &get_sku(SKU), 200).await;
    let figures = ["on_hand", "available", "held", "sold"].map(|f| sku[f].as_i64());
    assert_eq!(
        figures,
        [Some(ON_HAND), Some(ON_HAND), Some(0), Some(0)],
        "{sku}"
    );
    app.wait_for_ledger(SKU).await;
    assert_eq!(
        app.count("SELECT count(*) FROM movements").await,
        1,
        "movements"
    );
    assert_eq!(app.count("SELECT count(*) FROM holds").await, 0, "holds");
}

// ---------------------------------------------------------------------------
// Authentication.

#[tokio::test]
async fn storefront_endpoints_refuse_missing_unknown_and_non_bearer_tokens() {
    let app = app_with_sku().await;
    let hold = new_hold(&app, STOREFRONT, "c-0").await;
    let refused = [
        None,
        Some("Bearer wrong-token".to_owned()),
        Some(format!("Bearer {STOREFRONT}x")),
        Some(format!("Basic {STOREFRONT}")),
        Some(format!("Token {STOREFRONT}")),
        Some(STOREFRONT.to_owned()),
        Some("Bearer".to_owned()),
    ];
    for endpoint in storefront_endpoints(&hold) {
        for authorization in &refused {
            let req = endpoint.clone().authorization(authorization.as_deref());
            problem(&app, &req, 401, "unauthorized").await;
        }
    }
    // Nothing happened to the hold or the stock.
    let shown = ok(&app, &on_hold(&hold, None), 200).await;
    assert_eq!(shown["state"], "held", "{shown}");
    assert_eq!(app.sku(SKU).await["held"], 1);
    app.stop().await;
}

#[tokio::test]
async fn admin_endpoints_refuse_unknown_tokens_and_forbid_storefront_tokens() {
    let app = app_with_sku().await;
    for endpoint in admin_endpoints() {
        for authorization in [
            None,
            Some(bearer("wrong-token")),
            Some(format!("Basic {ADMIN}")),
        ] {
            let req = endpoint.clone().authorization(authorization.as_deref());
            problem(&app, &req, 401, "unauthorized").await;
        }
        for token in [STOREFRONT, SECOND_STOREFRONT] {
            let req = endpoint.clone().token(token);
            problem(&app, &req, 403, "forbidden").await;
        }
    }
    assert_untouched(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn the_admin_token_and_every_storefront_token_work_on_storefront_endpoints() {
    let app = app_with_sku().await;
    let kept = new_hold(&app, ADMIN, "c-1").await;
    let shown = ok(&app, &on_hold(&kept, None).token(ADMIN), 200).await;
    assert_eq!(
        (&shown["hold_id"], &shown["state"]),
        (&json!(kept), &json!("held"))
    );
    let extended = ok(&app, &on_hold(&kept, Some("extend")).token(ADMIN), 200).await;
    assert_eq!(extended["state"], "held");
    let confirmed = ok(&app, &on_hold(&kept, Some("confirm")).token(ADMIN), 200).await;
    assert_eq!(
        (&confirmed["state"], &confirmed["durable"]),
        (&json!("confirmed"), &json!(true))
    );

    let dropped = new_hold(&app, SECOND_STOREFRONT, "c-2").await;
    let released = ok(&app, &on_hold(&dropped, Some("release")).token(ADMIN), 200).await;
    assert_eq!(released["state"], "released");

    let sku = ok(&app, &get_sku(SKU).token(ADMIN), 200).await;
    assert_eq!(
        ["available", "held", "sold"].map(|f| sku[f].as_i64()),
        [Some(ON_HAND - 1), Some(0), Some(1)],
        "{sku}"
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Validation of bodies, headers and paths.

#[tokio::test]
async fn admission_bodies_name_every_bad_field() {
    let app = app_with_sku().await;
    let bad_customers = [
        json!(""),
        json!("x".repeat(129)),
        json!("c 1"),
        json!("c/1"),
        json!("c@1"),
        json!("cé"),
        json!(42),
        json!(["c-1"]),
        Value::Null,
    ];
    let bad_quantities = [
        json!(0),
        json!(1001),
        json!(-1),
        json!(1.5),
        json!("1"),
        json!(true),
        Value::Null,
    ];
    let mut cases = vec![
        case(json!({"quantity": 1}), &["customer_id"]),
        case(json!({"customer_id": "c-1"}), &["quantity"]),
        case(json!({}), &["customer_id", "quantity"]),
        case(
            json!({"customer_id": "", "quantity": 0}),
            &["customer_id", "quantity"],
        ),
    ];
    cases.extend(bad_customers.into_iter().map(|customer| {
        case(
            json!({"customer_id": customer, "quantity": 1}),
            &["customer_id"],
        )
    }));
    cases.extend(bad_quantities.into_iter().map(|quantity| {
        case(
            json!({"customer_id": "c-1", "quantity": quantity}),
            &["quantity"],
        )
    }));
    invalid_bodies(&app, &admit(SKU), &cases).await;
    assert_untouched(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn idempotency_keys_are_required_and_bounded() {
    let app = app_with_sku().await;
    let missing = admit(SKU).key(None);
    problem(&app, &missing, 400, "idempotency_key_missing").await;
    for key in ["k".repeat(256), "a b".into(), "a\tb".into(), String::new()] {
        invalid(&app, &admit(SKU).key(Some(&key)), &["Idempotency-Key"]).await;
    }
    assert_untouched(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn sku_ids_in_paths_are_validated() {
    let app = app_with_sku().await;
    for sku in [
        "x".repeat(65),
        "a%20b".into(),
        "a*b".into(),
        "a%2Fb".into(),
        "%FF".into(),
    ] {
        for req in sku_endpoints(&sku) {
            invalid(&app, &req, &["sku"]).await;
        }
    }
    assert_untouched(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn hold_ids_must_be_uuids_and_unknown_ones_are_not_found() {
    let app = app_with_sku().await;
    for hold in [
        "not-a-uuid",
        "123",
        "%FF",
        "4b0c6f5e-2d4a-4c1b-9f3e-8a7d6c5b4a3",
    ] {
        for req in hold_endpoints(hold) {
            invalid(&app, &req, &["hold_id"]).await;
        }
    }
    for hold in [V4_HOLD.to_owned(), forged_hold(1, 999_999)] {
        for req in hold_endpoints(&hold) {
            problem(&app, &req, 404, "not_found").await;
        }
    }
    assert_untouched(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn never_issued_ids_of_a_real_sku_are_not_found() {
    let app = app_with_sku().await;
    let pool = app.pg().await;
    let sku_no: i32 = sqlx::query_scalar("SELECT sku_no FROM skus WHERE sku = $1")
        .bind(SKU)
        .fetch_one(&pool)
        .await
        .expect("the SKU's number");
    pool.close().await;
    let sku_no = u32::try_from(sku_no).expect("a positive number");
    // From the first block (taken before any rebuild), and from far ahead.
    for serial in [0, 1 << 40] {
        for req in hold_endpoints(&forged_hold(serial, sku_no)) {
            problem(&app, &req, 404, "not_found").await;
        }
    }
    assert_untouched(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn sku_settings_name_every_bad_field() {
    let app = app_with_sku().await;
    let bad_settings: [(&'static str, Value); 7] = [
        ("hold_ttl_ms", json!(999)),
        ("hold_ttl_ms", json!(86_400_001)),
        ("hold_ttl_ms", json!("fast")),
        ("max_extensions", json!(11)),
        ("max_extensions", json!(-1)),
        ("per_customer_limit", json!(-1)),
        ("per_customer_limit", json!("none")),
    ];
    let mut cases = vec![
        case(json!({}), &["on_hand"]),
        case(
            json!({"on_hand": -1, "per_customer_limit": -1, "hold_ttl_ms": 999, "max_extensions": 11}),
            &[
                "on_hand",
                "per_customer_limit",
                "hold_ttl_ms",
                "max_extensions",
            ],
        ),
        case(
            json!({"on_hand": 99, "hold_ttl_ms": 86_400_001, "max_extensions": -1}),
            &["hold_ttl_ms", "max_extensions"],
        ),
    ];
    for on_hand in [Value::Null, json!(-1), json!("10"), json!(1.5)] {
        cases.push(case(json!({ "on_hand": on_hand }), &["on_hand"]));
    }
    for (field, value) in bad_settings {
        let mut body = json!({"on_hand": 99});
        body[field] = value;
        cases.push((body, vec![field]));
    }
    // Neither an update of `drop` nor the creation of a new SKU.
    for sku in [SKU, "fresh"] {
        invalid_bodies(&app, &put_sku(sku), &cases).await;
    }
    problem(&app, &get_sku("fresh"), 404, "not_found").await;
    assert_untouched(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn sku_settings_name_other_bad_fields_when_on_hand_is_bad_too() {
    let app = app_with_sku().await;
    let cases = [
        case(
            json!({"on_hand": "ten", "hold_ttl_ms": 86_400_001, "max_extensions": -1}),
            &["on_hand", "hold_ttl_ms", "max_extensions"],
        ),
        case(
            json!({"hold_ttl_ms": 999, "per_customer_limit": -1}),
            &["on_hand", "hold_ttl_ms", "per_customer_limit"],
        ),
    ];
    invalid_bodies(&app, &put_sku(SKU), &cases).await;
    assert_untouched(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn adjustments_name_every_bad_field() {
    let app = app_with_sku().await;
    let long = "r".repeat(501);
    let cases = [
        case(json!({"reason": "recount"}), &["delta"]),
        case(json!({"delta": "5", "reason": "recount"}), &["delta"]),
        case(json!({"delta": 1.5, "reason": "recount"}), &["delta"]),
        case(json!({"delta": 5}), &["reason"]),
        case(json!({"delta": 5, "reason": ""}), &["reason"]),
        case(json!({"delta": 5, "reason": long}), &["reason"]),
        case(json!({"delta": 5, "reason": 7}), &["reason"]),
        case(json!({}), &["delta", "reason"]),
        case(json!({"delta": "x", "reason": ""}), &["delta", "reason"]),
    ];
    invalid_bodies(&app, &adjust(SKU), &cases).await;
    assert_untouched(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn values_at_the_limits_are_accepted() {
    let app = app_with_sku().await;
    let customer = "c".repeat(128);
    let longest = admit(SKU)
        .key(Some(&format!("{}~", "k".repeat(254))))
        .json(json!({"customer_id": customer, "quantity": 1}));
    assert_eq!(ok(&app, &longest, 201).await["customer_id"], customer);
    let charset = admit(SKU)
        .key(Some("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"))
        .json(json!({"customer_id": "Az09._:-", "quantity": 1}));
    ok(&app, &charset, 201).await;
    // Too many units is a stock answer, not a validation error.
    let most = admit(SKU)
        .key(Some("most"))
        .json(json!({"customer_id": "c-2", "quantity": 1000}));
    problem(&app, &most, 409, "sold_out").await;

    let sku_64 = format!("{}.-_", "S".repeat(61));
    let lowest =
        json!({"on_hand": 0, "per_customer_limit": 0, "hold_ttl_ms": 1000, "max_extensions": 0});
    let created = ok(&app, &put_sku(&sku_64).json(lowest), 201).await;
    assert_eq!(created["sku"], sku_64);
    let highest = json!({"on_hand": 5, "hold_ttl_ms": 86_400_000, "max_extensions": 10});
    let updated = ok(&app, &put_sku(&sku_64).json(highest), 200).await;
    assert_eq!(
        (&updated["hold_ttl_ms"], &updated["max_extensions"]),
        (&json!(86_400_000), &json!(10))
    );
    let reason = adjust(&sku_64).json(json!({"delta": -1, "reason": "r".repeat(500)}));
    assert_eq!(ok(&app, &reason, 201).await["on_hand"], 4);
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Bodies that are not JSON objects, or too big.

#[tokio::test]
async fn bodies_must_be_small_json_objects_of_json_content_type() {
    let app = app_with_sku().await;
    for endpoint in body_endpoints() {
        let good = endpoint.json_body().to_string();
        let malformed = [
            endpoint.clone().plain_text(),
            endpoint
                .clone()
                .raw(Some("application/json"), "{\"customer_id\":"),
            endpoint.clone().raw(Some("application/json"), "not json"),
            endpoint.clone().raw(Some("application/json"), ""),
            endpoint.clone().raw(None, good),
        ];
        for req in &malformed {
            problem(&app, req, 400, "malformed").await;
        }
        for shape in ["[1, 2]", "[]", "\"text\"", "42", "null"] {
            let req = endpoint.clone().raw(Some("application/json"), shape);
            invalid(&app, &req, &["body"]).await;
        }
        problem(&app, &endpoint.padded(), 413, "payload_too_large").await;
    }
    assert_untouched(&app).await;
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Unknown things.

#[tokio::test]
async fn unknown_skus_routes_and_methods_answer_problems() {
    let app = app_with_sku().await;
    for req in [admit("ghost"), get_sku("ghost"), adjust("ghost")] {
        problem(&app, &req, 404, "not_found").await;
    }
    let routes = [
        Req::new(Method::GET, "/v1/nothing", ADMIN),
        Req::new(Method::GET, "/v2/skus", ADMIN),
        Req::new(Method::POST, "/v1/holds", STOREFRONT),
        Req::new(Method::GET, "/v1/skus/drop/holds/extra", STOREFRONT).authorization(None),
    ];
    for req in &routes {
        problem(&app, req, 404, "not_found").await;
    }
    let methods = [
        Req::new(Method::DELETE, "/v1/skus/x", ADMIN),
        Req::new(Method::DELETE, "/v1/skus/drop", STOREFRONT).authorization(None),
        Req::new(Method::GET, "/v1/skus/drop/holds", STOREFRONT),
        Req::new(Method::PATCH, format!("/v1/holds/{V4_HOLD}"), STOREFRONT),
        Req::new(
            Method::GET,
            format!("/v1/holds/{V4_HOLD}/confirm"),
            STOREFRONT,
        ),
    ];
    for req in &methods {
        let reply = send(&app, req).await;
        problem_shape(req, &reply, 405);
        assert!(reply.header("allow").is_some(), "{}", req.describe());
    }
    assert_untouched(&app).await;
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Bad requests change nothing; request ids.

#[tokio::test]
async fn a_batch_of_bad_requests_changes_nothing() {
    let app = app_with_sku().await;
    assert_eq!(
        app.count("SELECT count(*) FROM movements").await,
        1,
        "after creation"
    );
    // Each of these would take or add units, or change the SKU, if it got
    // past its check.
    let mut refused: Vec<(Req, u16, &str)> = Vec::new();
    for endpoint in body_endpoints() {
        refused.push((endpoint.clone().authorization(None), 401, "unauthorized"));
        refused.push((endpoint.clone().plain_text(), 400, "malformed"));
        refused.push((endpoint.padded(), 413, "payload_too_large"));
    }
    for endpoint in [put_sku(SKU), adjust(SKU)] {
        refused.push((endpoint.token(STOREFRONT), 403, "forbidden"));
    }
    refused.push((admit(SKU).key(None), 400, "idempotency_key_missing"));
    refused.push((admit(SKU).key(Some("a b")), 422, "validation"));
    refused.push((admit("a*b"), 422, "validation"));
    refused.push((admit("ghost"), 404, "not_found"));
    for (req, status, code) in &refused {
        problem(&app, req, *status, code).await;
    }
    let bad_bodies = [
        admit(SKU).json(json!({"customer_id": "c-1", "quantity": 1001})),
        admit(SKU).json(json!({"customer_id": "c-1", "quantity": 1.5})),
        admit(SKU).json(json!({"customer_id": "c-1", "quantity": "1"})),
        admit(SKU).json(json!({"customer_id": "c 1", "quantity": 1})),
        put_sku(SKU).json(json!({"on_hand": 99, "hold_ttl_ms": 999})),
        put_sku(SKU).json(json!({"on_hand": -1})),
        adjust(SKU).json(json!({"delta": 5, "reason": ""})),
        adjust(SKU).json(json!({"delta": 5})),
        adjust(SKU).json(json!({"delta": 5, "reason": "r".repeat(501)})),
    ];
    for req in &bad_bodies {
        problem(&app, req, 422, "validation").await;
    }
    for req in hold_endpoints(V4_HOLD) {
        problem(&app, &req, 404, "not_found").await;
    }
    assert_untouched(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn every_answer_carries_a_request_id_and_echoes_the_callers() {
    let app = app_with_sku().await;
    // `send` asserts that an id is present; two generated ids differ.
    let first = send(&app, &get_sku(SKU)).await;
    let second = send(&app, &get_sku(SKU)).await;
    assert_ne!(first.header("x-request-id"), second.header("x-request-id"));

    let answers = [
        (get_sku(SKU), 200),
        (get_sku(SKU).authorization(None), 401),
        (put_sku(SKU).token(STOREFRONT), 403),
        (admit(SKU).json(json!({})), 422),
        (admit(SKU).key(None), 400),
        (admit(SKU).raw(Some("text/plain"), "{}"), 400),
        (get_sku("ghost"), 404),
        (Req::new(Method::GET, "/v1/nothing", ADMIN), 404),
        (Req::new(Method::DELETE, "/v1/skus/x", ADMIN), 405),
        (
            admit(SKU).raw(Some("application/json"), "p".repeat(20_000)),
            413,
        ),
    ];
    for (req, status) in answers {
        let req = req.header("x-request-id", "abc-123");
        let reply = send(&app, &req).await;
        assert_eq!(reply.status, status, "{}: {}", req.describe(), reply.text);
        assert_eq!(
            reply.header("x-request-id"),
            Some("abc-123"),
            "{}",
            req.describe()
        );
    }
    app.stop().await;
}
