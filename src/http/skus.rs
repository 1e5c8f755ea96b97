//! SKU endpoints: read (storefront), create, update and adjust (admin).

use super::error::Problem;
use super::extract::{Admin, JsonObject, SkuPath, Storefront, idempotency_key, validated};
use super::{ApiError, AppState};
use crate::app::SkuOutcome;
use crate::domain::{self, FieldError, SkuId, SkuSettings, StockRequest};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/skus", get(list))
        .route("/v1/skus/{sku}", get(show).put(put))
        .route("/v1/skus/{sku}/adjustments", post(adjust))
}

/// A SKU as the API shows it: figures from the gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Sku {
    #[schema(value_type = String, min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._-]{1,64}$", example = "drop-1")]
    pub sku: SkuId,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub on_hand: i64,
    /// `on_hand - held - sold`, read from the gate.
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub available: i64,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub held: i64,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub sold: i64,
    /// 0 means no limit.
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub per_customer_limit: i64,
    #[schema(minimum = 1000, maximum = 86_400_000)]
    pub hold_ttl_ms: i64,
    #[schema(minimum = 0, maximum = 10)]
    pub max_extensions: i64,
}

impl From<domain::Sku> for Sku {
    fn from(sku: domain::Sku) -> Self {
        let f = sku.figures;
        Self {
            sku: sku.sku,
            on_hand: f.stock.on_hand,
            available: f.stock.available(),
            held: f.stock.held,
            sold: f.stock.sold,
            per_customer_limit: f.per_customer_limit,
            hold_ttl_ms: f.hold_ttl_ms,
            max_extensions: f.max_extensions,
        }
    }
}

const MAX_PAGE: i64 = 500;
const MAX_REASON_CHARS: usize = 500;

/// Read a SKU's figures, from the gate.
#[utoipa::path(
    get,
    path = "/v1/skus/{sku}",
    operation_id = "get_sku",
    tag = "skus",
    security(("storefront" = []), ("admin" = [])),
    params(SkuParam),
    responses(
        (status = 200, description = "The SKU", body = Sku),
        (status = 404, description = "`not_found`: no such SKU", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation`: the SKU id is not 1..64 characters of `[A-Za-z0-9._-]`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn show(
    State(state): State<AppState>,
    _: Storefront,
    SkuPath(sku): SkuPath,
) -> Result<Json<Sku>, ApiError> {
    state
        .app
        .sku(&sku)
        .await?
        .map(|sku| Json(sku.into()))
        .ok_or(ApiError::NotFound("sku"))
}

/// Create or update a SKU. A change of `on_hand` is recorded as an
/// adjustment movement.
#[utoipa::path(
    put,
    path = "/v1/skus/{sku}",
    operation_id = "put_sku",
    tag = "skus",
    security(("admin" = [])),
    params(SkuParam),
    request_body(content = PutSkuRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Updated", body = Sku),
        (status = 201, description = "Created", body = Sku),
        (status = 400, description = "`malformed`: the body is not a JSON object, or not `application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: `on_hand` would be below `held + sold`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`: body over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation`: `errors` names each bad field; `idempotency_key_reused`: the key was used for another change", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn put(
    State(state): State<AppState>,
    _: Admin,
    SkuPath(sku): SkuPath,
    headers: HeaderMap,
    body: Result<JsonObject, ApiError>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let JsonObject(body) = body?;
    let mut errors = Vec::new();
    let on_hand = body.required_int("on_hand", &mut errors);
    let limit = body.int("per_customer_limit", &mut errors);
    let ttl = body.int("hold_ttl_ms", &mut errors);
    let max_extensions = body.int("max_extensions", &mut errors);
    // Range checks run even when on_hand is bad, so one answer names every field.
    if let Err(range) = SkuSettings::parse(on_hand.unwrap_or(0), limit, ttl, max_extensions) {
        errors.extend(range);
    }
    let on_hand = validated(on_hand, errors)?;
    let settings =
        SkuSettings::parse(on_hand, limit, ttl, max_extensions).map_err(ApiError::Validation)?;
    let outcome = state
        .app
        .change_stock(&sku, StockRequest::Put(settings), key.as_ref())
        .await?;
    answer(outcome, Change::Put)
}

/// Adjust a SKU's `on_hand` by `delta`, recorded with its reason.
#[utoipa::path(
    post,
    path = "/v1/skus/{sku}/adjustments",
    operation_id = "adjust_sku",
    tag = "skus",
    security(("admin" = [])),
    params(SkuParam),
    request_body(content = AdjustmentRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Adjusted: the SKU", body = Sku),
        (status = 400, description = "`malformed`: the body is not a JSON object, or not `application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: no such SKU", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: `on_hand` would be below `held + sold`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`: body over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation`: `errors` names each bad field; `idempotency_key_reused`: the key was used for another change", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn adjust(
    State(state): State<AppState>,
    _: Admin,
    SkuPath(sku): SkuPath,
    headers: HeaderMap,
    body: Result<JsonObject, ApiError>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let JsonObject(body) = body?;
    let mut errors = Vec::new();
    let delta = body.required_int("delta", &mut errors);
    if delta.is_some_and(|d| d.abs() > SkuSettings::MAX_ON_HAND) {
        errors.push(FieldError::new("delta", "must be within ±1000000000"));
    }
    let reason = body.required_str("reason", &mut errors).map(str::to_owned);
    if let Some(r) = &reason {
        if r.trim().is_empty() || r.chars().count() > MAX_REASON_CHARS {
            errors.push(FieldError::new("reason", "must be 1..500 characters"));
        }
        // The reason lands in a Postgres text column, which refuses NUL: one
        // such byte would fail every retry of the batch that carries it.
        // Other control characters have no place in an audit line either.
        if r.chars().any(char::is_control) {
            errors.push(FieldError::new(
                "reason",
                "must not contain control characters",
            ));
        }
    }
    let (delta, reason) = validated(delta.zip(reason), errors)?;
    let request = StockRequest::Adjust { delta, reason };
    let outcome = state.app.change_stock(&sku, request, key.as_ref()).await?;
    answer(outcome, Change::Adjust)
}

/// Which endpoint answers: an adjustment is `201` (a movement was
/// created), a `PUT` `201` when it created the SKU and `200` otherwise.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    Put,
    Adjust,
}

fn answer(outcome: SkuOutcome, change: Change) -> Result<Response, ApiError> {
    let status = |created: bool| {
        if created || change == Change::Adjust {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        }
    };
    match outcome {
        SkuOutcome::Created(sku) => Ok((status(true), Json(Sku::from(sku))).into_response()),
        SkuOutcome::Updated(sku) => Ok((status(false), Json(Sku::from(sku))).into_response()),
        SkuOutcome::Replayed { created, sku } => {
            let mut response = (status(created), Json(Sku::from(sku))).into_response();
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(response)
        }
        SkuOutcome::KeyReused => Err(ApiError::IdempotencyKeyReused),
        SkuOutcome::Conflict {
            requested,
            held: _,
            sold: _,
        } if requested > SkuSettings::MAX_ON_HAND => Err(ApiError::Conflict(format!(
            "on_hand {requested} would be above {}",
            SkuSettings::MAX_ON_HAND
        ))),
        SkuOutcome::Conflict {
            requested,
            held,
            sold,
        } => Err(ApiError::Conflict(format!(
            "on_hand {requested} would be below held {held} + sold {sold}"
        ))),
        SkuOutcome::NotFound => Err(ApiError::NotFound("sku")),
    }
}

#[derive(Deserialize)]
pub(super) struct Page {
    limit: Option<String>,
    after: Option<String>,
}

/// A page of `GET /v1/skus`.
#[derive(Serialize, ToSchema)]
pub(super) struct SkuPage {
    skus: Vec<Sku>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, nullable = false, min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    next_after: Option<SkuId>,
}

/// The query of `GET /v1/skus`, as documented (the handler parses it
/// itself, to answer 422 naming the bad parameter).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(super) struct PageParams {
    /// SKUs per page.
    #[param(minimum = 1, maximum = 500, default = 100)]
    limit: Option<i64>,
    /// Start after this SKU id: the previous page's `next_after`.
    #[param(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    after: Option<String>,
}

/// The `{sku}` path parameter, as documented.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(super) struct SkuParam {
    /// SKU id.
    #[param(
        min_length = 1,
        max_length = 64,
        pattern = r"^[A-Za-z0-9._-]{1,64}$",
        example = "drop-1"
    )]
    sku: String,
}

/// The body of `PUT /v1/skus/{sku}`. For the OpenAPI document only: the
/// handler reads the JSON itself, so one 422 names every bad field.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct PutSkuRequest {
    #[schema(minimum = 0, maximum = 1_000_000_000, example = 100)]
    on_hand: i64,
    /// Units one customer may hold + buy; 0 (the default) = no limit.
    #[schema(minimum = 0, maximum = 1_000_000_000, default = 0, example = 2)]
    per_customer_limit: Option<i64>,
    /// How long a hold lives before it expires.
    #[schema(
        minimum = 1000,
        maximum = 86_400_000,
        default = 600_000,
        example = 600_000
    )]
    hold_ttl_ms: Option<i64>,
    /// How many times one hold may be extended.
    #[schema(minimum = 0, maximum = 10, default = 1, example = 1)]
    max_extensions: Option<i64>,
}

/// The body of `POST /v1/skus/{sku}/adjustments`. For the OpenAPI document
/// only, like `PutSkuRequest`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct AdjustmentRequest {
    /// Added to `on_hand` (negative to remove units).
    #[schema(minimum = -1_000_000_000, maximum = 1_000_000_000, example = -3)]
    delta: i64,
    /// Why: 1..500 characters, not only white space, no control characters.
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\s\x00-\x1F\x7F-\x9F][^\x00-\x1F\x7F-\x9F]*$",
        example = "damaged in warehouse"
    )]
    reason: String,
}

/// List SKUs in id order, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/skus",
    operation_id = "list_skus",
    tag = "skus",
    security(("admin" = [])),
    params(PageParams),
    responses(
        (status = 200, description = "A page of SKUs", body = SkuPage),
        (status = 422, description = "`validation`: `limit` or `after` is out of range", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn list(
    State(state): State<AppState>,
    _: Admin,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SkuPage>, ApiError> {
    let Query(page) =
        page.map_err(|_| ApiError::validation(FieldError::new("query", "is malformed")))?;
    let mut errors = Vec::new();
    let limit = match page.limit.as_deref().map(str::parse::<i64>) {
        None => 100,
        Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => n,
        Some(_) => {
            errors.push(FieldError::new("limit", "must be an integer from 1 to 500"));
            0
        }
    };
    let after = match page.after.as_deref().map(SkuId::parse) {
        None => None,
        Some(Ok(sku)) => Some(sku),
        Some(Err(_)) => {
            errors.push(FieldError::new("after", "must be a SKU id"));
            None
        }
    };
    let limit = validated(Some(limit), errors)?;
    let skus = state.app.skus(after.as_ref(), limit).await?;
    let next_after = (skus.len() as i64 == limit)
        .then(|| skus.last().map(|s| s.sku.clone()))
        .flatten();
    let skus = skus.into_iter().map(Sku::from).collect();
    Ok(Json(SkuPage { skus, next_after }))
}
