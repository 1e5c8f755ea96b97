//! Setting a SKU's counters to the ledger's at a fence: `lua/repair.lua`.

use super::reply::Fields;
use super::script::{Fenced, Script};
use super::snapshot::Snapshot;
use super::{GateError, keys::Keys};
use crate::domain::{SkuId, Stock};
use redis::{ScriptInvocation, Value};
use std::sync::LazyLock;

static SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../../lua/repair.lua")));

/// Sets a SKU's counters to `stock` if nothing was appended to its stream
/// since `snapshot` was taken.
#[derive(Debug, Clone)]
pub struct Repair {
    pub sku: SkuId,
    pub snapshot: Snapshot,
    pub stock: Stock,
}

impl Script for Repair {
    /// True when repaired; false when the SKU moved on since the snapshot.
    type Reply = Fenced<bool>;

    fn name(&self) -> &'static str {
        "repair"
    }

    fn invocation(&self, prefix: &str) -> ScriptInvocation<'static> {
        let k = Keys::new(prefix);
        let mut invocation = SCRIPT.key(k.stock(&self.sku));
        invocation
            .key(k.events(&self.sku))
            .arg(self.snapshot.fence.stream_id())
            .arg(self.stock.on_hand)
            .arg(self.stock.held)
            .arg(self.stock.sold);
        invocation
    }

    fn decode(&self, reply: Value) -> Result<Self::Reply, GateError> {
        let reply = Fields::parse(self.name(), reply)?;
        match reply.outcome()?.as_str() {
            "repaired" => Ok(Fenced::Open(true)),
            "moved" => Ok(Fenced::Open(false)),
            "closed" => Ok(Fenced::Closed),
            _ => Err(reply.unexpected()),
        }
    }
}
