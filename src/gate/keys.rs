//! Redis key names, private to the gate: nothing outside it names a key.
//! Every key of one SKU carries the hash tag `{sku}`, so a script touching a
//! SKU stays in one slot (Redis Cluster-ready).

use crate::domain::{HoldId, SkuId};

#[derive(Debug, Clone, Copy)]
pub(super) struct Keys<'a> {
    /// Lets several deployments, or parallel tests, share one Redis.
    prefix: &'a str,
}

impl<'a> Keys<'a> {
    pub(super) fn new(prefix: &'a str) -> Self {
        Self { prefix }
    }

    /// `<prefix>:{<sku>}:`, the start of every key of the SKU.
    pub(super) fn base(self, sku: &SkuId) -> String {
        format!("{}:{{{}}}:", self.prefix, sku)
    }

    /// The SKU's counters and settings. The SKU is open while it exists.
    pub(super) fn stock(self, sku: &SkuId) -> String {
        self.base(sku) + "stock"
    }

    /// Present while a rebuild has the SKU closed (its stock hash deleted),
    /// so that scripts tell "closed, try again" from "no such SKU".
    pub(super) fn closed(self, sku: &SkuId) -> String {
        self.base(sku) + "closed"
    }

    pub(super) fn hold(self, sku: &SkuId, hold_id: HoldId) -> String {
        format!("{}h:{}", self.base(sku), hold_id)
    }

    pub(super) fn expiry(self, sku: &SkuId) -> String {
        self.base(sku) + "expiry"
    }

    pub(super) fn customer(self, sku: &SkuId, customer_id: &str) -> String {
        format!("{}c:{}", self.base(sku), customer_id)
    }

    pub(super) fn idempotency(self, sku: &SkuId, key: &str) -> String {
        format!("{}i:{}", self.base(sku), key)
    }

    /// The record of an admin stock change made with an `Idempotency-Key`;
    /// its own namespace, so admin and storefront keys never meet.
    pub(super) fn admin_idempotency(self, sku: &SkuId, key: &str) -> String {
        format!("{}a:{}", self.base(sku), key)
    }

    pub(super) fn events(self, sku: &SkuId) -> String {
        self.base(sku) + "events"
    }

    /// Hash of SKU number → SKU id, so hold ids resolve and the worker finds
    /// the streams without scanning the keyspace.
    pub(super) fn registry(self) -> String {
        format!("{}:skus", self.prefix)
    }

    /// Stream of activity hints: each entry names SKUs whose event streams
    /// got events (see `activity`). Not under a SKU's hash tag: written by
    /// gatekeepers outside the scripts, once per interval.
    pub(super) fn activity(self) -> String {
        format!("{}:activity", self.prefix)
    }

    /// Sorted set SKU → the earliest time one of its holds may fall due,
    /// for the reaper (see `activity`).
    pub(super) fn due(self) -> String {
        format!("{}:due", self.prefix)
    }

    /// Pub/sub channel: SKUs whose units came back, published by the
    /// scripts that return units (see `sold_out`).
    pub(super) fn units_back(self) -> String {
        format!("{}:units-back", self.prefix)
    }

    /// Present while the gate is built; its value is the gate epoch. Redis
    /// losing its data loses this key first-class, which is how we notice.
    pub(super) fn gate(self) -> String {
        format!("{}:gate", self.prefix)
    }

    /// The id of the ledger the gate was built from.
    pub(super) fn gate_ledger(self) -> String {
        format!("{}:gate:ledger", self.prefix)
    }

    /// Written by every readiness probe: a write is what finds a Redis that
    /// reads fine but refuses writes (out of memory, read-only).
    pub(super) fn probe(self) -> String {
        format!("{}:probe", self.prefix)
    }
}
