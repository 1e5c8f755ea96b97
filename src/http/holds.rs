//! Storefront endpoints for holds.

use super::error::Problem;
use super::extract::{HoldPath, JsonObject, SkuPath, Storefront, idempotency_key, validated};
use super::{ApiError, AppState};
use crate::app::HoldOutcome;
use crate::domain::{self, Admission, CustomerId, Quantity};
use crate::limits::retry_after_seconds;
use crate::telemetry::metric;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use std::time::Instant;
use utoipa::ToSchema;

/// A hold as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Hold {
    #[schema(value_type = uuid::Uuid)]
    pub hold_id: domain::HoldId,
    #[schema(value_type = String, min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._-]{1,64}$", example = "drop-1")]
    pub sku: domain::SkuId,
    /// Absent only on a `lost` hold that no store kept (the gate that
    /// admitted it was lost before the ledger had it): its customer is
    /// unknown, and no made-up one is given.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[A-Za-z0-9._:-]{1,128}$",
        example = "c-42"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: i64,
    pub state: HoldState,
    /// RFC 3339, UTC.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: time::OffsetDateTime,
    /// Times this hold was extended.
    #[schema(minimum = 0, maximum = 10)]
    pub extensions: i64,
    /// True once the ledger (Postgres) has the hold.
    pub durable: bool,
}

impl From<domain::Hold> for Hold {
    fn from(hold: domain::Hold) -> Self {
        Self {
            hold_id: hold.hold_id,
            sku: hold.sku,
            customer_id: hold.customer_id,
            quantity: hold.quantity,
            state: hold.state.into(),
            expires_at: hold.expires_at,
            extensions: hold.extensions,
            durable: hold.durable,
        }
    }
}

/// `held` until confirmed, released, expired (its TTL passed) or lost (the
/// gate lost it before the ledger had it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HoldState {
    Held,
    Confirmed,
    Released,
    Expired,
    Lost,
}

impl From<domain::HoldState> for HoldState {
    fn from(state: domain::HoldState) -> Self {
        match state {
            domain::HoldState::Held => Self::Held,
            domain::HoldState::Confirmed => Self::Confirmed,
            domain::HoldState::Released => Self::Released,
            domain::HoldState::Expired => Self::Expired,
            domain::HoldState::Lost => Self::Lost,
        }
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/skus/{sku}/holds", post(admit))
        .route("/v1/holds/{hold_id}", get(show))
        .route("/v1/holds/{hold_id}/confirm", post(confirm))
        .route("/v1/holds/{hold_id}/release", post(release))
        .route("/v1/holds/{hold_id}/extend", post(extend))
}

/// The body of `POST /v1/skus/{sku}/holds`. For the OpenAPI document
/// only: the handler reads the JSON itself, so one 422 names every bad field.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct AdmitRequest {
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[A-Za-z0-9._:-]{1,128}$",
        example = "c-42"
    )]
    customer_id: String,
    /// Units to hold. More than the customer may still take under the SKU's
    /// `per_customer_limit` is `409 limit_exceeded`, not a validation error.
    #[schema(minimum = 1, maximum = 1000, example = 1)]
    quantity: i64,
}

/// Admit a pre-reservation.
///
/// Replaying an `Idempotency-Key` (scoped per SKU) with the same body
/// returns the first hold with `Idempotent-Replayed: true`, for at least
/// 24 h. Rejections (`sold_out`, `limit_exceeded`) store nothing: a retry
/// with the same key is decided afresh.
#[utoipa::path(
    post,
    path = "/v1/skus/{sku}/holds",
    operation_id = "admit_hold",
    tag = "holds",
    security(("storefront" = []), ("admin" = [])),
    params(
        ("sku" = String, Path, description = "SKU id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._-]{1,64}$", example = "drop-1"),
        ("Idempotency-Key" = String, Header, description = "The client's name for this admission attempt: 1..255 visible ASCII characters", min_length = 1, max_length = 255, pattern = r"^[\x21-\x7E]{1,255}$", example = "order-7f3a-1"),
    ),
    request_body(content = AdmitRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Held", body = Hold,
            headers(
                ("Location" = String, description = "`/v1/holds/{hold_id}`"),
                ("Idempotent-Replayed" = String, description = "`true` when this is the stored answer to an earlier request with this key"),
            ),
            links(
                ("GetHold" = (operation_id = "get_hold", parameters(("hold_id" = "$response.body#/hold_id")))),
                ("ConfirmHold" = (operation_id = "confirm_hold", parameters(("hold_id" = "$response.body#/hold_id")))),
                ("ReleaseHold" = (operation_id = "release_hold", parameters(("hold_id" = "$response.body#/hold_id")))),
                ("ExtendHold" = (operation_id = "extend_hold", parameters(("hold_id" = "$response.body#/hold_id")))),
            )),
        (status = 400, description = "`malformed` (not a JSON object, or not `application/json`) or `idempotency_key_missing`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: no such SKU", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`sold_out` (with `Retry-After` while live holds may still free units) or `limit_exceeded` (with `per_customer_limit` and `already_taken`)", body = Problem, content_type = "application/problem+json",
            headers(
                ("Retry-After" = u64, description = "`sold_out` only, and only while live holds may still expire or be released: seconds, rounded up"),
                ("Idempotent-Replayed" = String, description = "`true` when this is the stored answer to an earlier request with this key"),
            )),
        (status = 413, description = "`payload_too_large`: body over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation` (`errors` names each bad field, `Idempotency-Key` included) or `idempotency_key_reused` (this key was first used with another body)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`: too many admissions for this customer, or for all", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub(super) async fn admit(
    State(state): State<AppState>,
    _: Storefront,
    SkuPath(sku): SkuPath,
    headers: HeaderMap,
    body: Result<JsonObject, ApiError>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let key = idempotency_key(&headers)?.ok_or(ApiError::IdempotencyKeyMissing)?;
    let JsonObject(body) = body?;
    let mut errors = Vec::new();
    let customer = body
        .required_str("customer_id", &mut errors)
        .and_then(|c| CustomerId::parse(c).map_err(|e| errors.push(e)).ok());
    let quantity = body
        .required_int("quantity", &mut errors)
        .and_then(|q| Quantity::parse(q).map_err(|e| errors.push(e)).ok());
    let (customer, quantity) = validated(customer.zip(quantity), errors)?;

    if let Err(wait) = state.limits.check(customer.as_str()) {
        metrics::counter!(metric::ADMISSIONS_TOTAL, "outcome" => "rate_limited").increment(1);
        return Err(ApiError::RateLimited {
            retry_after_s: retry_after_seconds(wait),
        });
    }

    let admitted = state.app.admit(&sku, &customer, quantity, &key).await;
    let (outcome, replayed) = match &admitted {
        Ok(a) => match &a.outcome {
            Admission::Replayed(first) => (outcome_label(first), true),
            other => (outcome_label(other), false),
        },
        Err(_) => ("error", false),
    };
    let outcome = if replayed { "replayed" } else { outcome };
    metrics::counter!(metric::ADMISSIONS_TOTAL, "outcome" => outcome).increment(1);
    // Only an outcome the SKU's own script decided proves the SKU exists; an
    // unknown SKU or a store error must not claim a label of its own.
    let label = match &admitted {
        Ok(a) if a.outcome != Admission::UnknownSku => crate::telemetry::sku_label(&sku),
        _ => crate::telemetry::OTHER_SKUS.to_owned(),
    };
    metrics::counter!(metric::ADMISSIONS_BY_SKU_TOTAL, "sku" => label, "outcome" => outcome)
        .increment(1);
    metrics::histogram!(metric::ADMISSION_DURATION_SECONDS).record(started.elapsed().as_secs_f64());

    let admitted = admitted?;
    let first = match &admitted.outcome {
        Admission::Replayed(first) => first.as_ref(),
        other => other,
    };
    let mut response = match (first, admitted.hold) {
        (Admission::Held { .. }, Some(hold)) => created(hold),
        (Admission::SoldOut { retry_after_ms }, _) => ApiError::SoldOut {
            retry_after_s: retry_after_ms.map(super::error::ceil_seconds),
        }
        .into_response(),
        (Admission::LimitExceeded { limit, already }, _) => ApiError::LimitExceeded {
            limit: *limit,
            already: *already,
        }
        .into_response(),
        (Admission::KeyReused, _) => ApiError::IdempotencyKeyReused.into_response(),
        (Admission::UnknownSku, _) => ApiError::NotFound("sku").into_response(),
        (Admission::Backlogged, _) => ApiError::Unavailable {
            dependency: "postgres",
            retry_after_s: 5,
        }
        .into_response(),
        _ => ApiError::Internal.into_response(),
    };
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The `{hold_id}` path parameter, as documented.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(super) struct HoldParam {
    /// The hold's id, as `POST /v1/skus/{sku}/holds` answered it.
    hold_id: uuid::Uuid,
}

fn outcome_label(admission: &Admission) -> &'static str {
    match admission {
        Admission::Held { .. } => "held",
        Admission::Replayed(_) => "replayed",
        Admission::KeyReused => "key_reused",
        Admission::SoldOut { .. } => "sold_out",
        Admission::LimitExceeded { .. } => "limit_exceeded",
        Admission::UnknownSku => "not_found",
        Admission::Backlogged => "backlogged",
    }
}

fn created(hold: domain::Hold) -> Response {
    let hold = Hold::from(hold);
    let location = format!("/v1/holds/{}", hold.hold_id);
    let mut response = (StatusCode::CREATED, Json(hold)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn answer(outcome: HoldOutcome) -> Result<Json<Hold>, ApiError> {
    match outcome {
        HoldOutcome::Ok(hold) => Ok(Json(hold.into())),
        HoldOutcome::Conflict(state) => Err(ApiError::HoldState(state)),
        HoldOutcome::ExtensionLimit => Err(ApiError::ExtensionLimit),
        HoldOutcome::NotFound => Err(ApiError::NotFound("hold")),
    }
}

/// Read a hold.
#[utoipa::path(
    get,
    path = "/v1/holds/{hold_id}",
    operation_id = "get_hold",
    tag = "holds",
    security(("storefront" = []), ("admin" = [])),
    params(HoldParam),
    responses(
        (status = 200, description = "The hold", body = Hold),
        (status = 404, description = "`not_found`: no such hold", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation`: `hold_id` is not a UUID", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn show(
    State(state): State<AppState>,
    _: Storefront,
    HoldPath(id): HoldPath,
) -> Result<Json<Hold>, ApiError> {
    answer(state.app.hold(id).await?)
}

/// Confirm a hold: 200 only once Postgres has it (`durable: true`). Confirming a confirmed hold again is 200.
#[utoipa::path(
    post,
    path = "/v1/holds/{hold_id}/confirm",
    operation_id = "confirm_hold",
    tag = "holds",
    security(("storefront" = []), ("admin" = [])),
    params(HoldParam),
    responses(
        (status = 200, description = "The hold", body = Hold),
        (status = 404, description = "`not_found`: no such hold", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`hold_expired`, `hold_released` or `hold_lost` (with the hold's `state`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation`: `hold_id` is not a UUID", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn confirm(
    State(state): State<AppState>,
    _: Storefront,
    HoldPath(id): HoldPath,
) -> Result<Json<Hold>, ApiError> {
    answer(state.app.confirm(id).await?)
}

/// Release a hold: its units return to `available` at once. Releasing twice is 200.
#[utoipa::path(
    post,
    path = "/v1/holds/{hold_id}/release",
    operation_id = "release_hold",
    tag = "holds",
    security(("storefront" = []), ("admin" = [])),
    params(HoldParam),
    responses(
        (status = 200, description = "The hold", body = Hold),
        (status = 404, description = "`not_found`: no such hold", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`hold_confirmed`, `hold_expired` or `hold_lost` (with the hold's `state`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation`: `hold_id` is not a UUID", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn release(
    State(state): State<AppState>,
    _: Storefront,
    HoldPath(id): HoldPath,
) -> Result<Json<Hold>, ApiError> {
    answer(state.app.release(id).await?)
}

/// Extend a `held` hold: `expires_at` moves to now + the SKU's `hold_ttl_ms`, at most `max_extensions` times.
#[utoipa::path(
    post,
    path = "/v1/holds/{hold_id}/extend",
    operation_id = "extend_hold",
    tag = "holds",
    security(("storefront" = []), ("admin" = [])),
    params(HoldParam),
    responses(
        (status = 200, description = "The hold", body = Hold),
        (status = 404, description = "`not_found`: no such hold", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`extension_limit`, or the hold is not `held`: `hold_confirmed`, `hold_released`, `hold_expired`, `hold_lost` (with the hold's `state`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation`: `hold_id` is not a UUID", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn extend(
    State(state): State<AppState>,
    _: Storefront,
    HoldPath(id): HoldPath,
) -> Result<Json<Hold>, ApiError> {
    answer(state.app.extend(id).await?)
}
