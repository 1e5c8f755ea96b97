//! The vocabulary of dropgate, parsed once at the edge and trusted inside:
//! SKU ids, customers, quantities, idempotency keys, holds and the events that
//! move stock. No I/O lives here, and no clock or randomness: time and
//! entropy are passed in by the caller.

mod event;
mod hold;
mod idempotency;
mod outcome;
mod sku;
mod snapshot;
mod stock;

pub use event::{Change, Event, Position};
pub use hold::{Hold, HoldId, HoldIdKey, HoldState};
pub use idempotency::{
    IDEMPOTENCY_TTL_MS, StockRequest, decode_outcome, encode_held, fingerprint,
    stock_change_fingerprint,
};
pub use outcome::{Admission, HoldTransition};
pub use sku::{Sku, SkuId, SkuSettings};
pub use snapshot::{AdmittedKey, LiveHold, SkuSnapshot};
pub use stock::{MovementKind, SkuFigures, Stock};

use std::fmt;

/// A field of a request that failed validation, named as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// True when `value` is 1..=`max_len` characters, each allowed by `allowed`.
fn well_formed(value: &str, max_len: usize, allowed: impl Fn(u8) -> bool) -> bool {
    !value.is_empty() && value.len() <= max_len && value.bytes().all(allowed)
}

/// A storefront's customer, `[A-Za-z0-9._:-]{1,128}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CustomerId(String);

impl CustomerId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(value: &str) -> Result<Self, FieldError> {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-');
        if well_formed(value, Self::MAX_LEN, allowed) {
            Ok(Self(value.to_owned()))
        } else {
            Err(FieldError::new(
                "customer_id",
                "must be 1..128 characters of [A-Za-z0-9._:-]",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Units asked for in one hold, 1..=1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity(u32);

impl Quantity {
    pub const MAX: i64 = 1000;

    pub fn parse(value: i64) -> Result<Self, FieldError> {
        match u32::try_from(value) {
            Ok(q) if (1..=Self::MAX).contains(&value) => Ok(Self(q)),
            _ => Err(FieldError::new(
                "quantity",
                "must be an integer from 1 to 1000",
            )),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// The client's name for one admission attempt: 1..255 visible ASCII.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    pub fn parse(value: &str) -> Result<Self, FieldError> {
        if well_formed(value, Self::MAX_LEN, |b| b.is_ascii_graphic()) {
            Ok(Self(value.to_owned()))
        } else {
            Err(FieldError::new(
                "Idempotency-Key",
                "must be 1..255 visible ASCII characters",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Unix milliseconds to a UTC time; out-of-range values clamp to the epoch
/// (they come only from our own scripts).
pub fn time_from_ms(ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// A UTC time as unix milliseconds (every `OffsetDateTime` fits).
pub fn ms_from_time(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customer_ids_follow_the_contract() {
        assert!(CustomerId::parse("c-42:eu.1_x").is_ok());
        assert!(CustomerId::parse("").is_err());
        assert!(CustomerId::parse("a b").is_err());
        assert!(CustomerId::parse(&"x".repeat(128)).is_ok());
        assert!(CustomerId::parse(&"x".repeat(129)).is_err());
    }

    #[test]
    fn quantities_are_bounded() {
        assert!(Quantity::parse(0).is_err());
        assert_eq!(Quantity::parse(1).map(Quantity::get), Ok(1));
        assert!(Quantity::parse(1000).is_ok());
        assert!(Quantity::parse(1001).is_err());
        assert!(Quantity::parse(-1).is_err());
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        assert!(IdempotencyKey::parse("order-1!~").is_ok());
        assert!(IdempotencyKey::parse("with space").is_err());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
    }
}
