use super::{FieldError, well_formed};
use serde::Serialize;
use std::fmt;

/// A SKU id, `[A-Za-z0-9._-]{1,64}`. Safe inside Redis keys and URLs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SkuId(String);

impl SkuId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(value: &str) -> Result<Self, FieldError> {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
        if well_formed(value, Self::MAX_LEN, allowed) {
            Ok(Self(value.to_owned()))
        } else {
            Err(FieldError::new(
                "sku",
                "must be 1..64 characters of [A-Za-z0-9._-]",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SkuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an operator sets on a SKU with `PUT /v1/skus/{sku}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkuSettings {
    pub on_hand: i64,
    /// 0 means no limit.
    pub per_customer_limit: i64,
    pub hold_ttl_ms: i64,
    pub max_extensions: i64,
}

impl SkuSettings {
    pub const MAX_ON_HAND: i64 = 1_000_000_000;
    pub const HOLD_TTL_MS: std::ops::RangeInclusive<i64> = 1_000..=86_400_000;
    pub const DEFAULT_HOLD_TTL_MS: i64 = 600_000;
    pub const MAX_EXTENSIONS: i64 = 10;
    pub const DEFAULT_MAX_EXTENSIONS: i64 = 1;

    pub fn parse(
        on_hand: i64,
        per_customer_limit: Option<i64>,
        hold_ttl_ms: Option<i64>,
        max_extensions: Option<i64>,
    ) -> Result<Self, Vec<FieldError>> {
        let settings = Self {
            on_hand,
            per_customer_limit: per_customer_limit.unwrap_or(0),
            hold_ttl_ms: hold_ttl_ms.unwrap_or(Self::DEFAULT_HOLD_TTL_MS),
            max_extensions: max_extensions.unwrap_or(Self::DEFAULT_MAX_EXTENSIONS),
        };
        let mut errors = Vec::new();
        if !(0..=Self::MAX_ON_HAND).contains(&settings.on_hand) {
            errors.push(FieldError::new(
                "on_hand",
                "must be an integer from 0 to 1000000000",
            ));
        }
        if !(0..=Self::MAX_ON_HAND).contains(&settings.per_customer_limit) {
            errors.push(FieldError::new(
                "per_customer_limit",
                "must be an integer from 0 (no limit) to 1000000000",
            ));
        }
        if !Self::HOLD_TTL_MS.contains(&settings.hold_ttl_ms) {
            errors.push(FieldError::new(
                "hold_ttl_ms",
                "must be an integer from 1000 to 86400000",
            ));
        }
        if !(0..=Self::MAX_EXTENSIONS).contains(&settings.max_extensions) {
            errors.push(FieldError::new(
                "max_extensions",
                "must be an integer from 0 to 10",
            ));
        }
        if errors.is_empty() {
            Ok(settings)
        } else {
            Err(errors)
        }
    }
}

/// A SKU as dropgate answers about it: figures from the gate (or from the
/// ledger when Postgres decides admissions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sku {
    pub sku: SkuId,
    pub figures: super::SkuFigures,
}
