//! Extractors that turn every bad request into the project's problem+json:
//! auth, JSON bodies, path parameters.

use super::{ApiError, AppState};
use crate::domain::{FieldError, HoldId, IdempotencyKey, SkuId};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::{HeaderMap, StatusCode, header, request::Parts};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Bearer tokens. Compared in constant time; never logged.
#[derive(Clone, Default)]
pub struct Tokens {
    pub admin: Option<String>,
    pub storefront: Vec<String>,
}

/// A token reduced to a fixed-size digest. Comparing digests rather than
/// the tokens themselves makes the comparison's time independent of both
/// lengths: `ct_eq` on byte slices of different lengths returns at once.
type TokenDigest = [u8; 32];

fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    fn is(candidate: &TokenDigest, token: &str) -> bool {
        bool::from(candidate.ct_eq(&digest(token)))
    }

    fn is_admin(&self, candidate: &TokenDigest) -> bool {
        self.admin
            .as_deref()
            .is_some_and(|t| Self::is(candidate, t))
    }

    fn is_storefront(&self, candidate: &TokenDigest) -> bool {
        // Check every token, so timing does not tell which one matched.
        self.storefront
            .iter()
            .fold(false, |found, t| Self::is(candidate, t) | found)
    }
}

/// The digest of the request's bearer token, if it sent one.
fn bearer(parts: &Parts) -> Option<TokenDigest> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| digest(token.trim()))
}

/// A caller holding a storefront token (the admin token works too).
pub struct Storefront;

impl FromRequestParts<AppState> for Storefront {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or(ApiError::Unauthorized)?;
        if state.tokens.is_storefront(&token) || state.tokens.is_admin(&token) {
            Ok(Self)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

/// A caller holding the admin token.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or(ApiError::Unauthorized)?;
        if state.tokens.is_admin(&token) {
            Ok(Self)
        } else if state.tokens.is_storefront(&token) {
            Err(ApiError::Forbidden)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

/// The `{sku}` path parameter.
pub struct SkuPath(pub SkuId);

impl<S: Send + Sync> FromRequestParts<S> for SkuPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::validation(FieldError::new("sku", "is not valid UTF-8")))?;
        SkuId::parse(&raw).map(Self).map_err(ApiError::validation)
    }
}

/// The `{hold_id}` path parameter: a hold id this ledger issued. A UUID it
/// did not issue names no hold, and is 404 before any store is asked.
pub struct HoldPath(pub HoldId);

impl FromRequestParts<AppState> for HoldPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let invalid = || ApiError::validation(FieldError::new("hold_id", "must be a UUID"));
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| invalid())?;
        let uuid = uuid::Uuid::try_parse(&raw).map_err(|_| invalid())?;
        state
            .app
            .hold_id(uuid)
            .map(Self)
            .ok_or(ApiError::NotFound("hold"))
    }
}

/// A JSON object body. Field checks are the handler's, so every bad field
/// is named in one 422 answer.
pub struct JsonObject(pub Fields);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| {
                let v = v.trim().to_ascii_lowercase();
                v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
            })
            .unwrap_or(false);
        if !json_type {
            return Err(ApiError::Malformed("Content-Type must be application/json"));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::Malformed("the body could not be read")
            }
        })?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => Ok(Self(Fields(map))),
            Ok(_) => Err(ApiError::validation(FieldError::new(
                "body",
                "must be a JSON object",
            ))),
            Err(_) => Err(ApiError::Malformed("the body is not valid JSON")),
        }
    }
}

/// Typed access to a JSON object's fields, collecting every error.
pub struct Fields(Map<String, Value>);

impl Fields {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    pub fn int(&self, name: &'static str, errors: &mut Vec<FieldError>) -> Option<i64> {
        let value = self.get(name)?;
        let int = as_integer(value);
        if int.is_none() {
            errors.push(FieldError::new(name, "must be an integer"));
        }
        int
    }

    pub fn required_int(&self, name: &'static str, errors: &mut Vec<FieldError>) -> Option<i64> {
        if self.get(name).is_none() {
            errors.push(FieldError::new(name, "is required"));
            return None;
        }
        self.int(name, errors)
    }

    pub fn required_str(&self, name: &'static str, errors: &mut Vec<FieldError>) -> Option<&str> {
        match self.get(name) {
            None => {
                errors.push(FieldError::new(name, "is required"));
                None
            }
            Some(Value::String(s)) => Some(s),
            Some(_) => {
                errors.push(FieldError::new(name, "must be a string"));
                None
            }
        }
    }
}

/// A JSON number without a fractional part, as JSON Schema's `integer`
/// counts it: `5`, `5.0` and `5e0` alike (JSON itself does not tell them
/// apart, and some encoders write every number as a float).
fn as_integer(value: &Value) -> Option<i64> {
    // -2^63 is i64::MIN exactly; 2^63 is the first float above i64::MAX.
    const BOUND: f64 = 9_223_372_036_854_775_808.0;
    value.as_i64().or_else(|| {
        let float = value.as_f64()?;
        (float.fract() == 0.0 && (-BOUND..BOUND).contains(&float)).then_some(float as i64)
    })
}

/// Ok with the value when no field failed, else 422 naming them all.
pub fn validated<T>(value: Option<T>, errors: Vec<FieldError>) -> Result<T, ApiError> {
    match value {
        Some(value) if errors.is_empty() => Ok(value),
        _ => Err(ApiError::Validation(errors)),
    }
}

/// The request's `Idempotency-Key`, if it sent one; a malformed one is a
/// 422 naming the header.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| IdempotencyKey::parse(v).ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::validation(FieldError::new(
                "Idempotency-Key",
                "must be 1..255 visible ASCII characters",
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tokens_match_only_exactly_whatever_the_lengths() {
        let tokens = Tokens {
            admin: Some("admin-token-1".to_owned()),
            storefront: vec!["store-token-1".to_owned(), "store-token-2".to_owned()],
        };
        assert!(tokens.is_admin(&digest("admin-token-1")));
        assert!(tokens.is_storefront(&digest("store-token-2")));
        for wrong in ["", "admin-token-", "admin-token-12", "store-token-1", "x"] {
            assert!(!tokens.is_admin(&digest(wrong)), "{wrong:?}");
        }
        for wrong in ["store-token-", "store-token-10", "admin-token-1"] {
            assert!(!tokens.is_storefront(&digest(wrong)), "{wrong:?}");
        }
        assert!(!Tokens::default().is_admin(&digest("")));
    }

    #[test]
    fn integers_may_be_written_as_floats() {
        assert_eq!(as_integer(&json!(5)), Some(5));
        assert_eq!(as_integer(&json!(5.0)), Some(5));
        assert_eq!(as_integer(&json!(-57236.0)), Some(-57236));
        assert_eq!(as_integer(&json!(1e3)), Some(1000));
        assert_eq!(as_integer(&json!(5.5)), None);
        assert_eq!(as_integer(&json!(1e300)), None);
        assert_eq!(as_integer(&json!(u64::MAX)), None);
        assert_eq!(as_integer(&json!("5")), None);
        assert_eq!(as_integer(&json!(true)), None);
    }
}
