//! A SKU's figures and stream position read atomically: `lua/snapshot.lua`,
//! the reconciler's fence (see `repair`).

use super::reply::Fields;
use super::script::Script;
use super::{GateError, keys::Keys};
use crate::domain::{Position, SkuId};
use redis::{ScriptInvocation, Value};
use std::sync::LazyLock;

static SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../../lua/snapshot.lua")));

/// Reads a SKU's counters together with its stream position.
#[derive(Debug, Clone)]
pub struct TakeSnapshot {
    pub sku: SkuId,
}

/// A SKU's figures and its stream position, read atomically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub on_hand: i64,
    pub held: i64,
    pub sold: i64,
    /// The last event appended; `None` when the stream has none yet.
    pub last: Option<Position>,
    /// Entries still in the stream (not yet acknowledged and trimmed).
    pub backlog: i64,
    /// The raw last id, handed back to `repair` as the fence.
    pub(super) fence: Position,
}

impl Script for TakeSnapshot {
    /// `None` when the SKU is not in the gate (or is closed).
    type Reply = Option<Snapshot>;

    fn name(&self) -> &'static str {
        "snapshot"
    }

    fn invocation(&self, prefix: &str) -> ScriptInvocation<'static> {
        let k = Keys::new(prefix);
        let mut invocation = SCRIPT.key(k.stock(&self.sku));
        invocation.key(k.events(&self.sku));
        invocation
    }

    fn decode(&self, reply: Value) -> Result<Self::Reply, GateError> {
        let reply = Fields::parse(self.name(), reply)?;
        match reply.outcome()?.as_str() {
            "found" => {
                let last = reply
                    .position("last_id")?
                    .ok_or_else(|| reply.unexpected())?;
                Ok(Some(Snapshot {
                    on_hand: reply.int("on_hand")?,
                    held: reply.int("held")?,
                    sold: reply.int("sold")?,
                    last: (last != Position { epoch: 0, seq: 0 }).then_some(last),
                    backlog: reply.int("backlog")?,
                    fence: last,
                }))
            }
            "no_sku" => Ok(None),
            _ => Err(reply.unexpected()),
        }
    }
}
