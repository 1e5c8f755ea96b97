//! Confirming or releasing a hold: `lua/settle.lua`. Both settle a held
//! hold; they differ only in the state it ends in.

use super::reply::{Fields, GateHold};
use super::script::{Fenced, Script, with_hold_lib};
use super::{Activity, GateError, keys::Keys};
use crate::domain::{HoldId, HoldState, Position, SkuId};
use redis::{ScriptInvocation, Value};
use std::sync::LazyLock;
use uuid::Uuid;

static SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| with_hold_lib(include_str!("../../lua/settle.lua")));

/// How a client settles its hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    Confirm,
    Release,
}

impl Settlement {
    /// The state the hold ends in.
    pub fn state(self) -> HoldState {
        match self {
            Self::Confirm => HoldState::Confirmed,
            Self::Release => HoldState::Released,
        }
    }
}

/// Settles a held hold: `held -> confirmed` or `held -> released`.
#[derive(Debug, Clone)]
pub struct Settle {
    pub sku: SkuId,
    pub hold_id: HoldId,
    pub to: Settlement,
    /// Names the settlement's event, or the expiry's if the hold is past due.
    pub event_id: Uuid,
}

impl Settle {
    pub fn new(sku: SkuId, hold_id: HoldId, to: Settlement) -> Self {
        Self {
            sku,
            hold_id,
            to,
            event_id: Uuid::new_v4(),
        }
    }
}

impl Script for Settle {
    type Reply = Fenced<Transition>;

    fn name(&self) -> &'static str {
        match self.to {
            Settlement::Confirm => "confirm",
            Settlement::Release => "release",
        }
    }

    fn invocation(&self, prefix: &str) -> ScriptInvocation<'static> {
        let k = Keys::new(prefix);
        let mut invocation = SCRIPT.key(k.hold(&self.sku, self.hold_id));
        invocation
            .arg(k.base(&self.sku))
            .arg(self.hold_id.to_string())
            .arg(self.event_id.to_string())
            .arg(self.to.state().as_str());
        invocation
    }

    fn decode(&self, reply: Value) -> Result<Self::Reply, GateError> {
        Transition::decode(Fields::parse(self.name(), reply)?)
    }

    fn activity(&self, reply: &Self::Reply) -> Option<Activity<'_>> {
        reply.appended().then_some(Activity {
            sku: &self.sku,
            due_ms: None,
        })
    }
}

/// What a hold script (settle, extend) decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Changed now; the event sits at `position`.
    Done {
        hold: GateHold,
        position: Position,
    },
    /// Already in the state asked for.
    Same {
        hold: GateHold,
    },
    /// In another state (possibly just expired, then `position` is set).
    Conflict {
        hold: GateHold,
        position: Option<Position>,
    },
    ExtensionLimit {
        hold: GateHold,
    },
    NoHold,
}

impl Fenced<Transition> {
    /// Whether the call appended an event: the transition itself, or the
    /// expiry of a hold found past due.
    pub(super) fn appended(&self) -> bool {
        matches!(
            self,
            Fenced::Open(
                Transition::Done { .. }
                    | Transition::Conflict {
                        position: Some(_),
                        ..
                    }
            )
        )
    }
}

impl Transition {
    pub(super) fn decode(reply: Fields) -> Result<Fenced<Self>, GateError> {
        let outcome = reply.outcome()?;
        let hold = || GateHold::from_fields(&reply);
        Ok(Fenced::Open(match outcome.as_str() {
            "closed" => return Ok(Fenced::Closed),
            "no_hold" => Self::NoHold,
            "done" => Self::Done {
                hold: hold()?,
                position: reply
                    .position("position")?
                    .ok_or_else(|| reply.unexpected())?,
            },
            "same" => Self::Same { hold: hold()? },
            "conflict" => Self::Conflict {
                hold: hold()?,
                position: reply.position("position")?,
            },
            "ext_limit" => Self::ExtensionLimit { hold: hold()? },
            _ => return Err(reply.unexpected()),
        }))
    }
}
