//! Every error the API answers, as RFC 9457 problem+json with a stable
//! `code`. Mapped to status codes here and nowhere else; 5xx bodies are
//! opaque and the cause goes to the log with the request id.

use crate::app::AppError;
use crate::domain::{FieldError, HoldState};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    Unauthorized,
    Forbidden,
    Validation(Vec<FieldError>),
    Malformed(&'static str),
    PayloadTooLarge,
    /// The request target is over `MAX_URI_BYTES`.
    UriTooLong,
    /// The request's header fields are over `MAX_HEADER_BYTES` or
    /// `MAX_HEADER_COUNT`.
    HeaderFieldsTooLarge,
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
    /// The process is handling as many requests as it may: shed.
    Overloaded,
    Internal,
}

impl ApiError {
    pub fn validation(error: FieldError) -> Self {
        Self::Validation(vec![error])
    }

    pub fn code(&self) -> ProblemCode {
        match self {
            Self::Unauthorized => ProblemCode::Unauthorized,
            Self::Forbidden => ProblemCode::Forbidden,
            Self::Validation(_) => ProblemCode::Validation,
            Self::Malformed(_) => ProblemCode::Malformed,
            Self::PayloadTooLarge => ProblemCode::PayloadTooLarge,
            Self::UriTooLong => ProblemCode::UriTooLong,
            Self::HeaderFieldsTooLarge => ProblemCode::HeaderFieldsTooLarge,
            Self::IdempotencyKeyMissing => ProblemCode::IdempotencyKeyMissing,
            Self::IdempotencyKeyReused => ProblemCode::IdempotencyKeyReused,
            Self::NotFound(_) | Self::RouteNotFound => ProblemCode::NotFound,
            Self::MethodNotAllowed => ProblemCode::MethodNotAllowed,
            Self::SoldOut { .. } => ProblemCode::SoldOut,
            Self::LimitExceeded { .. } => ProblemCode::LimitExceeded,
            Self::RateLimited { .. } => ProblemCode::RateLimited,
            Self::HoldState(HoldState::Expired) => ProblemCode::HoldExpired,
            Self::HoldState(HoldState::Released) => ProblemCode::HoldReleased,
            Self::HoldState(HoldState::Confirmed) => ProblemCode::HoldConfirmed,
            Self::HoldState(HoldState::Lost) => ProblemCode::HoldLost,
            Self::HoldState(HoldState::Held) => ProblemCode::HoldHeld,
            Self::ExtensionLimit => ProblemCode::ExtensionLimit,
            Self::Conflict(_) => ProblemCode::Conflict,
            Self::Unavailable { .. } | Self::Overloaded => ProblemCode::Unavailable,
            Self::Internal => ProblemCode::Internal,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::Validation(_) | Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Malformed(_) | Self::IdempotencyKeyMissing => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::HeaderFieldsTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::NotFound(_) | Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::SoldOut { .. }
            | Self::LimitExceeded { .. }
            | Self::HoldState(_)
            | Self::ExtensionLimit
            | Self::Conflict(_) => StatusCode::CONFLICT,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } | Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
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
            Self::UriTooLong => "The request target is too long",
            Self::HeaderFieldsTooLarge => "The request's header fields are too large",
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
            Self::Unavailable { .. } | Self::Overloaded => "Service unavailable",
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
            Self::Overloaded => "dropgate is shedding load".into(),
            Self::PayloadTooLarge => "bodies are limited to 16384 bytes".into(),
            Self::UriTooLong => format!(
                "the path and query are limited to {} bytes",
                super::MAX_URI_BYTES
            ),
            Self::HeaderFieldsTooLarge => format!(
                "header fields are limited to {} fields and {} bytes",
                super::MAX_HEADER_COUNT,
                super::MAX_HEADER_BYTES
            ),
            Self::Internal => "see the server log for this request id".into(),
        }
    }

    fn retry_after_s(&self) -> Option<u64> {
        match self {
            Self::SoldOut { retry_after_s } => *retry_after_s,
            Self::RateLimited { retry_after_s } | Self::Unavailable { retry_after_s, .. } => {
                Some(*retry_after_s)
            }
            Self::Overloaded => Some(1),
            _ => None,
        }
    }
}

impl ApiError {
    /// The body of this error's answer.
    pub fn problem(&self) -> Problem {
        let code = self.code();
        let mut problem = Problem {
            kind: format!("/problems/{}", code.as_str()),
            title: self.title(),
            status: self.status().as_u16(),
            detail: self.detail(),
            code,
            errors: None,
            state: None,
            per_customer_limit: None,
            already_taken: None,
        };
        match self {
            Self::Validation(errors) => {
                problem.errors = Some(errors.iter().map(InvalidField::from).collect());
            }
            Self::LimitExceeded { limit, already } => {
                problem.per_customer_limit = Some(*limit);
                problem.already_taken = Some(*already);
            }
            Self::HoldState(state) => problem.state = Some((*state).into()),
            _ => {}
        }
        problem
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.problem())).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if self == Self::Unauthorized {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after_s() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The media type of every error answer.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error answer (RFC 9457). `code` is the stable field clients switch
/// on; the extension fields appear only with the codes named on them.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "/problems/sold_out",
    "title": "Sold out",
    "status": 409,
    "detail": "not enough available units",
    "code": "sold_out"
}))]
pub struct Problem {
    /// `/problems/<code>`.
    #[serde(rename = "type")]
    #[schema(example = "/problems/sold_out")]
    pub kind: String,
    /// A short, fixed summary of the code.
    #[schema(value_type = String)]
    pub title: &'static str,
    /// The HTTP status, repeated.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What went wrong with this request. For `validation`, every bad field
    /// as `field: message`, joined with `; `.
    pub detail: String,
    pub code: ProblemCode,
    /// `validation` only: each field that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub errors: Option<Vec<InvalidField>>,
    /// `hold_*` codes only: the hold's current state.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub state: Option<super::holds::HoldState>,
    /// `limit_exceeded` only: the SKU's per-customer limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, minimum = 0)]
    pub per_customer_limit: Option<i64>,
    /// `limit_exceeded` only: units this customer already holds or bought.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, minimum = 0)]
    pub already_taken: Option<i64>,
}

/// One field of a request that failed validation, named as the client sent
/// it (`sku`, `hold_id`, `Idempotency-Key`, a body field, `body`, `query`).
#[derive(Debug, Serialize, ToSchema)]
pub struct InvalidField {
    #[schema(value_type = String, example = "quantity")]
    pub field: &'static str,
    #[schema(example = "must be an integer from 1 to 1000")]
    pub message: String,
}

impl From<&FieldError> for InvalidField {
    fn from(error: &FieldError) -> Self {
        Self {
            field: error.field,
            message: error.message.clone(),
        }
    }
}

/// The stable code of a problem, the field clients switch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProblemCode {
    Unauthorized,
    Forbidden,
    Validation,
    Malformed,
    PayloadTooLarge,
    UriTooLong,
    HeaderFieldsTooLarge,
    IdempotencyKeyMissing,
    IdempotencyKeyReused,
    NotFound,
    MethodNotAllowed,
    SoldOut,
    LimitExceeded,
    RateLimited,
    HoldExpired,
    HoldReleased,
    HoldConfirmed,
    HoldLost,
    HoldHeld,
    ExtensionLimit,
    Conflict,
    Unavailable,
    Internal,
}

impl ProblemCode {
    pub const ALL: [Self; 23] = [
        Self::Unauthorized,
        Self::Forbidden,
        Self::Validation,
        Self::Malformed,
        Self::PayloadTooLarge,
        Self::UriTooLong,
        Self::HeaderFieldsTooLarge,
        Self::IdempotencyKeyMissing,
        Self::IdempotencyKeyReused,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::SoldOut,
        Self::LimitExceeded,
        Self::RateLimited,
        Self::HoldExpired,
        Self::HoldReleased,
        Self::HoldConfirmed,
        Self::HoldLost,
        Self::HoldHeld,
        Self::ExtensionLimit,
        Self::Conflict,
        Self::Unavailable,
        Self::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::Validation => "validation",
            Self::Malformed => "malformed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UriTooLong => "uri_too_long",
            Self::HeaderFieldsTooLarge => "header_fields_too_large",
            Self::IdempotencyKeyMissing => "idempotency_key_missing",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::SoldOut => "sold_out",
            Self::LimitExceeded => "limit_exceeded",
            Self::RateLimited => "rate_limited",
            Self::HoldExpired => "hold_expired",
            Self::HoldReleased => "hold_released",
            Self::HoldConfirmed => "hold_confirmed",
            Self::HoldLost => "hold_lost",
            Self::HoldHeld => "hold_held",
            Self::ExtensionLimit => "extension_limit",
            Self::Conflict => "conflict",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

impl From<AppError> for ApiError {
    fn from(error: AppError) -> Self {
        let unavailable = match &error {
            AppError::Gate(gate) => gate.is_unavailable(),
            AppError::Ledger(ledger) => ledger.is_unavailable(),
            AppError::GateNotBuilt | AppError::UnknownToLedger | AppError::OutOfTime(_) => true,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_names() {
        for code in ProblemCode::ALL {
            assert_eq!(
                serde_json::to_value(code).ok(),
                Some(serde_json::Value::from(code.as_str()))
            );
        }
    }

    #[test]
    fn problems_carry_only_their_extensions() {
        let fields = |error: ApiError| {
            let value = serde_json::to_value(error.problem()).unwrap_or_default();
            let mut keys: Vec<String> = value
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            keys.sort();
            keys.join(",")
        };
        assert_eq!(
            fields(ApiError::NotFound("sku")),
            "code,detail,status,title,type"
        );
        assert_eq!(
            fields(ApiError::validation(FieldError::new("quantity", "bad"))),
            "code,detail,errors,status,title,type"
        );
        assert_eq!(
            fields(ApiError::LimitExceeded {
                limit: 2,
                already: 2
            }),
            "already_taken,code,detail,per_customer_limit,status,title,type"
        );
        assert_eq!(
            fields(ApiError::HoldState(HoldState::Expired)),
            "code,detail,state,status,title,type"
        );
    }
}
