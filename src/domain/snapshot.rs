//! What the ledger hands over when the gate is (re)built: everything the
//! gate keeps for one SKU, as plain values. The rebuild passes it from one
//! store to the other, so neither store knows the other's types.

use super::{HoldId, SkuFigures, SkuId};

/// A hold still `held` in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveHold {
    pub hold_id: HoldId,
    pub customer_id: String,
    pub quantity: i64,
    pub expires_at_ms: i64,
    pub extensions: i64,
    pub created_ms: i64,
}

/// An admission that took units within the idempotency window, so its key
/// still replays after the rebuild.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmittedKey {
    pub key: String,
    pub fingerprint: String,
    pub hold_id: HoldId,
    pub expires_at_ms: i64,
    pub created_ms: i64,
}

/// One SKU as the ledger knows it, moved to a new gate epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkuSnapshot {
    pub sku: SkuId,
    pub sku_no: u32,
    pub epoch: i64,
    pub figures: SkuFigures,
    pub holds: Vec<LiveHold>,
    /// Units held or bought per customer.
    pub customers: Vec<(String, i64)>,
    pub keys: Vec<AdmittedKey>,
}
