//! Every error the API answers, as RFC 9457 problem+json with a stable
//! `code`. Mapped to status codes here and nowhere else; 5xx bodies are
//! opaque and the cause goes to the log with the request id.

use crate::app::AppError;
use crate::domain::{FieldError, HoldState};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    Unauthorized,
    Forbidden,
    Validation(Vec<FieldError>),
    Malformed(&'static str),
    PayloadTooLarge,
    IdempotencyKeyMissing,
    IdempotencyKeyReused,
    NotFound(&'static str),
    RouteNotFound,
    MethodNotAllowed,
    /// `retry_after_s` only while live holds may still free units.
    SoldOut {
        retry_after_s: Option<u64>,
    },
    LimitExceeded {
        limit: i64,
        already: i64,
    },
    RateLimited {
        retry_after_s: u64,
    },
    HoldState(HoldState),
    ExtensionLimit,
    Conflict(String),
    Unavailable {
        dependency: &'static str,
        retry_after_s: u64,
    },
    Internal,
}

impl ApiError {
    pub fn validation(error: FieldError) -> Self {
        Self::Validation(vec![error])
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::Validation(_) => "validation",
            Self::Malformed(_) => "malformed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::IdempotencyKeyMissing => "idempotency_key_missing",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::NotFound(_) | Self::RouteNotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::SoldOut { .. } => "sold_out",
            Self::LimitExceeded { .. } => "limit_exceeded",
            Self::RateLimited { .. } => "rate_limited",
            Self::HoldState(HoldState::Expired) => "hold_expired",
            Self::HoldState(HoldState::Released) => "hold_released",
            Self::HoldState(HoldState::Confirmed) => "hold_confirmed",
            Self::HoldState(HoldState::Lost) => "hold_lost",
            Self::HoldState(HoldState::Held) => "hold_held",
            Self::ExtensionLimit => "extension_limit",
            Self::Conflict(_) => "conflict",
            Self::Unavailable { .. } => "unavailable",
            Self::Internal => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::Validation(_) | Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Malformed(_) | Self::IdempotencyKeyMissing => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound(_) | Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::SoldOut { .. }
            | Self::LimitExceeded { .. }
            | Self::HoldState(_)
            | Self::ExtensionLimit
            | Self::Conflict(_) => StatusCode::CONFLICT,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::Unauthorized => "Missing or unknown bearer token",
            Self::Forbidden => "This token may not use this endpoint",
            Self::Validation(_) => "The request failed validation",
            Self::Malformed(_) => "The body is not a JSON object",
            Self::PayloadTooLarge => "The body is over 16 KiB",
            Self::IdempotencyKeyMissing => "Idempotency-Key header missing",
            Self::IdempotencyKeyReused => "Idempotency-Key reused with a different request",
            Self::NotFound(_) | Self::RouteNotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::SoldOut { .. } => "Sold out",
            Self::LimitExceeded { .. } => "Per-customer limit exceeded",
            Self::RateLimited { .. } => "Too many requests",
            Self::HoldState(_) => "The hold is not in a state that allows this",
            Self::ExtensionLimit => "The hold cannot be extended again",
            Self::Conflict(_) => "Conflict",
            Self::Unavailable { .. } => "Service unavailable",
            Self::Internal => "Internal error",
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::Validation(errors) => errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            Self::Malformed(why) => (*why).to_owned(),
            Self::NotFound(what) => format!("no such {what}"),
            Self::RouteNotFound => "no such endpoint".into(),
            Self::MethodNotAllowed => "this endpoint does not take that method".into(),
            Self::Unauthorized => "send Authorization: Bearer <token>".into(),
            Self::Forbidden => "admin endpoints need the admin token".into(),
            Self::IdempotencyKeyMissing => "POST to holds needs an Idempotency-Key header".into(),
            Self::IdempotencyKeyReused => "this key was first used with another body".into(),
            Self::SoldOut { .. } => "not enough available units".into(),
            Self::LimitExceeded { limit, already } => {
                format!("per-customer limit is {limit}; this customer has {already}")
            }
            Self::RateLimited { retry_after_s } => format!("retry after {retry_after_s} s"),
            Self::HoldState(state) => format!("the hold is {}", state.as_str()),
            Self::ExtensionLimit => "the hold was already extended max_extensions times".into(),
            Self::Conflict(why) => why.clone(),
            Self::Unavailable { dependency, .. } => format!("{dependency} is unavailable"),
            Self::PayloadTooLarge => "bodies are limited to 16384 bytes".into(),
            Self::Internal => "see the server log for this request id".into(),
        }
    }

    fn retry_after_s(&self) -> Option<u64> {
        match self {
            Self::SoldOut { retry_after_s } => *retry_after_s,
            Self::RateLimited { retry_after_s } | Self::Unavailable { retry_after_s, .. } => {
                Some(*retry_after_s)
            }
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code();
        let mut body = json!({
            "type": format!("/problems/{code}"),
            "title": self.title(),
            "status": status.as_u16(),
            "detail": self.detail(),
            "code": code,
        });
        match &self {
            Self::Validation(errors) => body["errors"] = json!(errors),
            Self::LimitExceeded { limit, already } => {
                body["per_customer_limit"] = json!(limit);
                body["already_taken"] = json!(already);
            }
            Self::HoldState(state) => body["state"] = json!(state),
            _ => {}
        }
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self == Self::Unauthorized {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after_s() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<AppError> for ApiError {
    fn from(error: AppError) -> Self {
        let unavailable = match &error {
            AppError::Gate(gate) => gate.is_unavailable(),
            AppError::Ledger(ledger) => ledger.is_unavailable(),
            AppError::GateNotBuilt => true,
        };
        if unavailable {
            tracing::warn!(%error, "dependency unavailable");
            Self::Unavailable {
                dependency: error.dependency(),
                retry_after_s: 1,
            }
        } else {
            tracing::error!(%error, "internal error");
            Self::Internal
        }
    }
}

/// Milliseconds to whole seconds for Retry-After, rounded up, at least 1.
pub fn ceil_seconds(ms: i64) -> u64 {
    u64::try_from((ms + 999) / 1000).unwrap_or(1).max(1)
}
