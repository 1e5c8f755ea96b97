//! Extending a hold: `lua/extend.lua`.

use super::reply::Fields;
use super::script::{Fenced, Script, with_hold_lib};
use super::settle::Transition;
use super::{Activity, GateError, keys::Keys};
use crate::domain::{HoldId, SkuId};
use redis::{ScriptInvocation, Value};
use std::sync::LazyLock;
use uuid::Uuid;

static SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| with_hold_lib(include_str!("../../lua/extend.lua")));

/// Moves a held hold's expiry to now (Redis's clock) + the SKU's hold TTL, at most
/// `max_extensions` times.
#[derive(Debug, Clone)]
pub struct Extend {
    pub sku: SkuId,
    pub hold_id: HoldId,
    /// Names the extension's event, or the expiry's if the hold is past due.
    pub event_id: Uuid,
}

impl Extend {
    pub fn new(sku: SkuId, hold_id: HoldId) -> Self {
        Self {
            sku,
            hold_id,
            event_id: Uuid::new_v4(),
        }
    }
}

impl Script for Extend {
    type Reply = Fenced<Transition>;

    fn name(&self) -> &'static str {
        "extend"
    }

    fn invocation(&self, prefix: &str) -> ScriptInvocation<'static> {
        let k = Keys::new(prefix);
        let mut invocation = SCRIPT.key(k.hold(&self.sku, self.hold_id));
        invocation
            .arg(k.base(&self.sku))
            .arg(self.hold_id.to_string())
            .arg(self.event_id.to_string());
        invocation
    }

    fn decode(&self, reply: Value) -> Result<Self::Reply, GateError> {
        Transition::decode(Fields::parse(self.name(), reply)?)
    }

    /// An extension moves the hold's expiry later, so the SKU's due hint
    /// (at or before the old expiry) still holds.
    fn activity(&self, reply: &Self::Reply) -> Option<Activity<'_>> {
        reply.appended().then_some(Activity {
            sku: &self.sku,
            due_ms: None,
        })
    }
}
