//! Marking a hold the ledger refused as lost: `lua/lose.lua`.

use super::reply::Fields;
use super::script::{Fenced, Script, with_hold_lib};
use super::{GateError, keys::Keys};
use crate::domain::{HoldId, HoldState, SkuId};
use redis::{ScriptInvocation, Value};
use std::sync::LazyLock;

static SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| with_hold_lib(include_str!("../../lua/lose.lua")));

/// Marks a hold lost, its units out of the SKU's and the customer's counts.
#[derive(Debug, Clone)]
pub struct Lose {
    pub sku: SkuId,
    pub hold_id: HoldId,
}

impl Script for Lose {
    /// The state the hold was in; `None` when the gate does not have it.
    type Reply = Fenced<Option<HoldState>>;

    fn name(&self) -> &'static str {
        "lose"
    }

    fn invocation(&self, prefix: &str) -> ScriptInvocation<'static> {
        let k = Keys::new(prefix);
        let mut invocation = SCRIPT.key(k.hold(&self.sku, self.hold_id));
        invocation
            .arg(k.base(&self.sku))
            .arg(self.hold_id.to_string());
        invocation
    }

    fn decode(&self, reply: Value) -> Result<Self::Reply, GateError> {
        let reply = Fields::parse(self.name(), reply)?;
        match reply.outcome()?.as_str() {
            "lost" => {
                let was = reply.text("was")?;
                let was = HoldState::parse(&was)
                    .ok_or_else(|| GateError::protocol(format!("lose: hold was {was:?}")))?;
                Ok(Fenced::Open(Some(was)))
            }
            "no_hold" => Ok(Fenced::Open(None)),
            "closed" => Ok(Fenced::Closed),
            _ => Err(reply.unexpected()),
        }
    }
}
