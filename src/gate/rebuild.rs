//! Closing a SKU and writing it anew from a ledger snapshot.
//!
//! A SKU is open while its stock hash exists; every script that changes a
//! SKU checks that first. Closing deletes the hash in one atomic step, so
//! from then on no admission, settlement or stock change lands in the SKU,
//! and its stream holds every event it will ever have. The rebuild writes
//! the SKU from the ledger and creates the stock hash last, which reopens it.

use super::{CONSUMER_GROUP, Gate, GateError};
use crate::domain::{IDEMPOTENCY_TTL_MS, SkuId, SkuSnapshot, encode_held};
use redis::{SetExpiry, SetOptions};

/// Keys written per pipeline while rebuilding.
const REBUILD_CHUNK: usize = 500;

impl Gate {
    /// Closes a SKU: its stock hash goes and a `closed` marker comes, in one
    /// MULTI, so scripts answer `closed` (503, retry) from the next command
    /// on. Closing a closed SKU changes nothing.
    pub async fn close_sku(&self, sku: &SkuId) -> Result<(), GateError> {
        let k = self.keys();
        let () = redis::pipe()
            .atomic()
            .set(k.closed(sku), "rebuild")
            .ignore()
            .del(k.stock(sku))
            .ignore()
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Removes a SKU from the gate for good: every key under its hash tag
    /// and its registry entry. For a SKU the gate has but the ledger it is
    /// rebuilt from does not; closed first, so nothing writes meanwhile.
    pub async fn drop_sku(&self, sku: &SkuId) -> Result<(), GateError> {
        self.close_sku(sku).await?;
        let mut conn = self.conn.clone();
        let k = self.keys();
        let pattern = format!("{}*", k.base(sku));
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                let () = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let names: std::collections::HashMap<u32, String> = redis::cmd("HGETALL")
            .arg(k.registry())
            .query_async(&mut conn)
            .await?;
        for (no, name) in names {
            if name == sku.as_str() {
                let () = redis::cmd("HDEL")
                    .arg(k.registry())
                    .arg(no)
                    .query_async(&mut conn)
                    .await?;
            }
        }
        Ok(())
    }

    /// Writes one closed SKU as the ledger has it, then opens it. The SKU's
    /// old keys go first (the marker aside); the stock hash comes last, so
    /// the SKU stays closed until everything else is in place. Idempotency
    /// records expire at an absolute time (`PXAT`), so Redis's clock alone
    /// decides what is left of their window.
    ///
    /// Refuses an open SKU: its scripts would keep writing while it is
    /// rewritten, and what they wrote would be lost.
    pub async fn rebuild_sku(&self, sku: &SkuSnapshot) -> Result<(), GateError> {
        let mut conn = self.conn.clone();
        let k = self.keys();
        let id = &sku.sku;
        let closed = k.closed(id);
        let (marked, open): (bool, bool) = redis::pipe()
            .exists(&closed)
            .exists(k.stock(id))
            .query_async(&mut conn)
            .await?;
        if !marked || open {
            return Err(GateError::NotClosed(id.clone()));
        }

        let pattern = format!("{}*", k.base(id));
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            let doomed: Vec<&String> = keys.iter().filter(|key| **key != closed).collect();
            if !doomed.is_empty() {
                let () = redis::cmd("UNLINK")
                    .arg(&doomed)
                    .query_async(&mut conn)
                    .await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        for chunk in sku.holds.chunks(REBUILD_CHUNK) {
            let mut pipe = redis::pipe();
            for h in chunk {
                pipe.hset_multiple(
                    k.hold(id, h.hold_id),
                    &[
                        ("s", "held".to_owned()),
                        ("c", h.customer_id.clone()),
                        ("q", h.quantity.to_string()),
                        ("e", h.expires_at_ms.to_string()),
                        ("x", h.extensions.to_string()),
                        ("t", h.created_ms.to_string()),
                        ("a", String::new()),
                    ],
                )
                .ignore()
                .zadd(k.expiry(id), h.hold_id.to_string(), h.expires_at_ms)
                .ignore();
            }
            let () = pipe.query_async(&mut conn).await?;
        }
        for chunk in sku.customers.chunks(REBUILD_CHUNK) {
            let mut pipe = redis::pipe();
            for (customer, units) in chunk {
                pipe.set(k.customer(id, customer), units).ignore();
            }
            let () = pipe.query_async(&mut conn).await?;
        }
        for chunk in sku.keys.chunks(REBUILD_CHUNK) {
            let mut pipe = redis::pipe();
            for admitted in chunk {
                // The record lives out the rest of its window from admission.
                let ends_ms = admitted.created_ms + IDEMPOTENCY_TTL_MS;
                pipe.set_options(
                    k.idempotency(id, &admitted.key),
                    encode_held(
                        &admitted.fingerprint,
                        admitted.hold_id,
                        admitted.expires_at_ms,
                    ),
                    SetOptions::default()
                        .with_expiration(SetExpiry::PXAT(u64::try_from(ends_ms).unwrap_or(1))),
                )
                .ignore();
            }
            let () = pipe.query_async(&mut conn).await?;
        }
        let f = &sku.figures;
        let () = redis::pipe()
            .atomic()
            .cmd("XGROUP")
            .arg("CREATE")
            .arg(k.events(id))
            .arg(CONSUMER_GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .ignore()
            .hset_multiple(
                k.stock(id),
                &[
                    ("on_hand", f.stock.on_hand),
                    ("held", f.stock.held),
                    ("sold", f.stock.sold),
                    ("limit", f.per_customer_limit),
                    ("ttl_ms", f.hold_ttl_ms),
                    ("max_ext", f.max_extensions),
                    ("epoch", sku.epoch),
                    ("sku_no", i64::from(sku.sku_no)),
                ],
            )
            .ignore()
            .hset(k.registry(), sku.sku_no, id.as_str())
            .ignore()
            .del(&closed)
            .ignore()
            // Its stock is the ledger's now: whatever a gatekeeper
            // remembered of it (sold out) is forgotten.
            .publish(k.units_back(), id.as_str())
            .ignore()
            .query_async(&mut conn)
            .await?;
        self.remember(sku.sku_no, id.clone());
        self.sold_out.units_back(id);
        // The due set may have gone with the data that made the rebuild
        // necessary: tell the reaper about the live holds written here.
        if let Some(first_due) = sku.holds.iter().map(|h| h.expires_at_ms).min() {
            self.hint_due(id, first_due);
        }
        Ok(())
    }
}
