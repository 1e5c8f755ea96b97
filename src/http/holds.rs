//! Storefront endpoints for holds.

use super::extract::{validated, HoldPath, JsonObject, SkuPath, Storefront};
use super::{ApiError, AppState};
use crate::app::HoldOutcome;
use crate::domain::{CustomerId, Hold, IdempotencyKey, Quantity};
use crate::gate::Admission;
use crate::limits::retry_after_seconds;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::time::Instant;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/skus/{sku}/holds", post(admit))
        .route("/v1/holds/{hold_id}", get(show))
        .route("/v1/holds/{hold_id}/confirm", post(confirm))
        .route("/v1/holds/{hold_id}/release", post(release))
        .route("/v1/holds/{hold_id}/extend", post(extend))
}

/// `POST /v1/skus/{sku}/holds`
async fn admit(
    State(state): State<AppState>,
    _: Storefront,
    SkuPath(sku): SkuPath,
    headers: HeaderMap,
    body: Result<JsonObject, ApiError>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let key = match headers.get("idempotency-key") {
        None => return Err(ApiError::IdempotencyKeyMissing),
        Some(value) => value
            .to_str()
            .map_err(|_| ())
            .and_then(|v| IdempotencyKey::parse(v).map_err(|_| ()))
            .map_err(|()| {
                ApiError::validation(crate::domain::FieldError::new(
                    "Idempotency-Key",
                    "must be 1..255 visible ASCII characters",
                ))
            })?,
    };
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
        metrics::counter!("dropgate_admissions_total", "outcome" => "rate_limited").increment(1);
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
    metrics::counter!("dropgate_admissions_total", "outcome" => outcome).increment(1);
    metrics::histogram!("dropgate_admission_duration_seconds")
        .record(started.elapsed().as_secs_f64());

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

fn created(hold: Hold) -> Response {
    let location = format!("/v1/holds/{}", hold.hold_id);
    let mut response = (StatusCode::CREATED, Json(hold)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn answer(outcome: HoldOutcome) -> Result<Json<Hold>, ApiError> {
    match outcome {
        HoldOutcome::Ok(hold) => Ok(Json(hold)),
        HoldOutcome::Conflict(state) => Err(ApiError::HoldState(state)),
        HoldOutcome::ExtensionLimit => Err(ApiError::ExtensionLimit),
        HoldOutcome::NotFound => Err(ApiError::NotFound("hold")),
    }
}

/// `GET /v1/holds/{hold_id}`
async fn show(
    State(state): State<AppState>,
    _: Storefront,
    HoldPath(id): HoldPath,
) -> Result<Json<Hold>, ApiError> {
    answer(state.app.hold(id).await?)
}

/// `POST /v1/holds/{hold_id}/confirm`
async fn confirm(
    State(state): State<AppState>,
    _: Storefront,
    HoldPath(id): HoldPath,
) -> Result<Json<Hold>, ApiError> {
    answer(state.app.confirm(id).await?)
}

/// `POST /v1/holds/{hold_id}/release`
async fn release(
    State(state): State<AppState>,
    _: Storefront,
    HoldPath(id): HoldPath,
) -> Result<Json<Hold>, ApiError> {
    answer(state.app.release(id).await?)
}

/// `POST /v1/holds/{hold_id}/extend`
async fn extend(
    State(state): State<AppState>,
    _: Storefront,
    HoldPath(id): HoldPath,
) -> Result<Json<Hold>, ApiError> {
    answer(state.app.extend(id).await?)
}
