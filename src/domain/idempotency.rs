//! Idempotency: what makes two requests "the same", and the record an
//! admission that took units leaves behind so a retry replays it.
//!
//! The record is a string `<fingerprint>|H|<hold id>|<expires_at_ms>`,
//! written by `lua/admit.lua` and, when the gate is rebuilt, from the
//! ledger's holds. This module is the one Rust reader and writer of it.

use super::{Admission, CustomerId, HoldId, Quantity};

/// Replays are answered for at least this long (the contract says 24 h).
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 60 * 60 * 1000;

/// Same customer and quantity, same fingerprint: what makes a replay.
pub fn fingerprint(customer: &CustomerId, quantity: Quantity) -> String {
    let digest = sha1_smol::Sha1::from(format!("{}\n{}", customer.as_str(), quantity.get()))
        .digest()
        .to_string();
    digest[..16].to_owned()
}

/// The fingerprint of an admin stock change: `PUT` and adjustments with the
/// same `Idempotency-Key` replay only when they change the same thing.
pub fn stock_change_fingerprint(change: &StockRequest) -> String {
    let text = match change {
        StockRequest::Put(s) => format!(
            "put\n{}\n{}\n{}\n{}",
            s.on_hand, s.per_customer_limit, s.hold_ttl_ms, s.max_extensions
        ),
        StockRequest::Adjust { delta, reason } => format!("adjust\n{delta}\n{reason}"),
    };
    let digest = sha1_smol::Sha1::from(text).digest().to_string();
    digest[..16].to_owned()
}

/// An admin stock change as the client asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StockRequest {
    Put(super::SkuSettings),
    Adjust { delta: i64, reason: String },
}

/// A stored outcome, without its fingerprint: `H|<hold id>|<expires_at_ms>`.
/// Rejections are never stored (API.md: they leave no trace); the script
/// reads a rejection's record that an older version stored as no record.
pub fn decode_outcome(record: &str) -> Option<Admission> {
    match record.split('|').collect::<Vec<_>>().as_slice() {
        ["H", hold_id, expires_at_ms] => Some(Admission::Held {
            hold_id: HoldId::parse(hold_id)?,
            expires_at_ms: expires_at_ms.parse().ok()?,
        }),
        _ => None,
    }
}

/// The full record of an admission that took units.
pub fn encode_held(fingerprint: &str, hold_id: HoldId, expires_at_ms: i64) -> String {
    format!("{fingerprint}|H|{hold_id}|{expires_at_ms}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_records_round_trip() {
        let one = crate::domain::Quantity::parse(1).unwrap_or_else(|e| panic!("{e}"));
        let hold_id = HoldId::issue(&crate::domain::HoldIdKey::new(b"k"), 9, 7, one);
        let record = encode_held("0123456789abcdef", hold_id, 42);
        let outcome = record.strip_prefix("0123456789abcdef|").map(decode_outcome);
        assert_eq!(
            outcome,
            Some(Some(Admission::Held {
                hold_id,
                expires_at_ms: 42
            }))
        );
        assert_eq!(decode_outcome("S|0"), None, "rejections are not records");
        assert_eq!(decode_outcome("H|not-a-uuid|1"), None);
    }

    #[test]
    fn stock_change_fingerprints_follow_the_change() {
        let adjust = |delta, reason: &str| StockRequest::Adjust {
            delta,
            reason: reason.to_owned(),
        };
        let fp = |r: &StockRequest| stock_change_fingerprint(r);
        assert_eq!(fp(&adjust(-3, "damaged")), fp(&adjust(-3, "damaged")));
        assert_ne!(fp(&adjust(-3, "damaged")), fp(&adjust(-2, "damaged")));
        assert_ne!(fp(&adjust(-3, "damaged")), fp(&adjust(-3, "stolen")));
        let settings = super::super::SkuSettings::parse(10, None, None, None).expect("settings");
        assert_ne!(fp(&StockRequest::Put(settings)), fp(&adjust(10, "")));
    }

    #[test]
    fn fingerprints_follow_customer_and_quantity() {
        let c = |s| CustomerId::parse(s).expect("customer");
        let q = |n| Quantity::parse(n).expect("quantity");
        assert_eq!(fingerprint(&c("a"), q(1)), fingerprint(&c("a"), q(1)));
        assert_ne!(fingerprint(&c("a"), q(1)), fingerprint(&c("a"), q(2)));
        assert_ne!(fingerprint(&c("a"), q(1)), fingerprint(&c("b"), q(1)));
        assert_eq!(fingerprint(&c("a"), q(1)).len(), 16);
    }
}
