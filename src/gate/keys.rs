//! Redis key names. Every key of one SKU carries the hash tag `{sku}`, so a
//! script touching a SKU stays in one slot (Redis Cluster-ready).

use crate::domain::{HoldId, SkuId};

#[derive(Debug, Clone)]
pub struct Keys {
    /// Lets several deployments, or parallel tests, share one Redis.
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// `<prefix>:{<sku>}:`, the start of every key of the SKU.
    pub fn base(&self, sku: &SkuId) -> String {
        format!("{}:{{{}}}:", self.prefix, sku)
    }

    pub fn stock(&self, sku: &SkuId) -> String {
        self.base(sku) + "stock"
    }

    pub fn hold(&self, sku: &SkuId, hold_id: HoldId) -> String {
        format!("{}h:{}", self.base(sku), hold_id)
    }

    pub fn expiry(&self, sku: &SkuId) -> String {
        self.base(sku) + "expiry"
    }

    pub fn customer(&self, sku: &SkuId, customer_id: &str) -> String {
        format!("{}c:{}", self.base(sku), customer_id)
    }

    pub fn idempotency(&self, sku: &SkuId, key: &str) -> String {
        format!("{}i:{}", self.base(sku), key)
    }

    pub fn events(&self, sku: &SkuId) -> String {
        self.base(sku) + "events"
    }

    /// Hash of SKU number → SKU id, so hold ids resolve and the worker finds
    /// the streams without scanning the keyspace.
    pub fn registry(&self) -> String {
        format!("{}:skus", self.prefix)
    }

    /// Present while the gate is built; its value is the gate epoch. Redis
    /// losing its data loses this key first-class, which is how we notice.
    pub fn gate(&self) -> String {
        format!("{}:gate", self.prefix)
    }

    /// Written by every readiness probe: a write is what finds a Redis that
    /// reads fine but refuses writes (out of memory, read-only).
    pub fn probe(&self) -> String {
        format!("{}:probe", self.prefix)
    }

    /// Every key of this deployment, for tests and tools that clean up.
    pub fn pattern(&self) -> String {
        format!("{}:*", self.prefix)
    }
}
