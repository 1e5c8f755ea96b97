//! SKU endpoints: read (storefront), create, update and adjust (admin).

use super::extract::{validated, Admin, JsonObject, SkuPath, Storefront};
use super::{ApiError, AppState};
use crate::app::SkuOutcome;
use crate::domain::{FieldError, Sku, SkuId, SkuSettings};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/skus", get(list))
        .route("/v1/skus/{sku}", get(show).put(put))
        .route("/v1/skus/{sku}/adjustments", post(adjust))
}

const MAX_PAGE: i64 = 500;
const MAX_REASON_CHARS: usize = 500;

/// `GET /v1/skus/{sku}`
async fn show(
    State(state): State<AppState>,
    _: Storefront,
    SkuPath(sku): SkuPath,
) -> Result<Json<Sku>, ApiError> {
    state
        .app
        .sku(&sku)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("sku"))
}

/// `PUT /v1/skus/{sku}`
async fn put(
    State(state): State<AppState>,
    _: Admin,
    SkuPath(sku): SkuPath,
    body: Result<JsonObject, ApiError>,
) -> Result<Response, ApiError> {
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
    answer(state.app.put_sku(&sku, settings).await?)
}

/// `POST /v1/skus/{sku}/adjustments`
async fn adjust(
    State(state): State<AppState>,
    _: Admin,
    SkuPath(sku): SkuPath,
    body: Result<JsonObject, ApiError>,
) -> Result<Response, ApiError> {
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
    }
    let (delta, reason) = validated(delta.zip(reason), errors)?;
    match state.app.adjust_sku(&sku, delta, &reason).await? {
        SkuOutcome::Updated(sku) => Ok((StatusCode::CREATED, Json(sku)).into_response()),
        other => answer(other),
    }
}

fn answer(outcome: SkuOutcome) -> Result<Response, ApiError> {
    match outcome {
        SkuOutcome::Created(sku) => Ok((StatusCode::CREATED, Json(sku)).into_response()),
        SkuOutcome::Updated(sku) => Ok((StatusCode::OK, Json(sku)).into_response()),
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
struct Page {
    limit: Option<String>,
    after: Option<String>,
}

#[derive(Serialize)]
struct SkuPage {
    skus: Vec<Sku>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after: Option<SkuId>,
}

/// `GET /v1/skus?limit=&after=`
async fn list(
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
    Ok(Json(SkuPage { skus, next_after }))
}
