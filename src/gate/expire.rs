//! The reaper's step: expiring a SKU's due holds, `lua/expire.lua`.

use super::reply::Fields;
use super::script::{Fenced, Script, with_hold_lib};
use super::{Activity, GateError, keys::Keys};
use crate::domain::SkuId;
use redis::{ScriptInvocation, Value};
use std::sync::LazyLock;
use uuid::Uuid;

static SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| with_hold_lib(include_str!("../../lua/expire.lua")));

/// Expires up to `event_ids.len()` holds of `sku` whose expiry has passed
/// by Redis's clock, one event id each.
#[derive(Debug, Clone)]
pub struct Expire {
    pub sku: SkuId,
    pub event_ids: Vec<Uuid>,
}

impl Expire {
    /// A batch of at most `batch` holds, with fresh event ids.
    pub fn new(sku: SkuId, batch: usize) -> Self {
        Self {
            sku,
            event_ids: (0..batch).map(|_| Uuid::new_v4()).collect(),
        }
    }
}

/// What one expiry batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// Holds expired now.
    pub expired: u64,
    /// Due holds left for the next batch (non-zero when this one was full).
    pub still_due: u64,
    /// The earliest expiry of the SKU's live holds after the batch; `None`
    /// when it has none.
    pub next_due_ms: Option<i64>,
}

impl Script for Expire {
    type Reply = Fenced<Expired>;

    fn name(&self) -> &'static str {
        "expire"
    }

    fn invocation(&self, prefix: &str) -> ScriptInvocation<'static> {
        let k = Keys::new(prefix);
        let mut invocation = SCRIPT.key(k.expiry(&self.sku));
        invocation.arg(k.base(&self.sku));
        for event_id in &self.event_ids {
            invocation.arg(event_id.to_string());
        }
        invocation
    }

    fn decode(&self, reply: Value) -> Result<Self::Reply, GateError> {
        let reply = Fields::parse(self.name(), reply)?;
        match reply.outcome()?.as_str() {
            "expired" => Ok(Fenced::Open(Expired {
                expired: reply.unsigned("expired")?,
                still_due: reply.unsigned("still_due")?,
                next_due_ms: match reply.text("next_due_ms")?.as_str() {
                    "" => None,
                    _ => Some(reply.int("next_due_ms")?),
                },
            })),
            "closed" => Ok(Fenced::Closed),
            _ => Err(reply.unexpected()),
        }
    }

    fn activity(&self, reply: &Self::Reply) -> Option<Activity<'_>> {
        match reply {
            Fenced::Open(Expired { expired, .. }) if *expired > 0 => Some(Activity {
                sku: &self.sku,
                due_ms: None,
            }),
            _ => None,
        }
    }
}
