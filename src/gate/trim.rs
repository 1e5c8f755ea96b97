//! Dropping a stream's acknowledged entries: `lua/trim.lua`.

use super::reply::Fields;
use super::script::Script;
use super::{CONSUMER_GROUP, GateError, keys::Keys};
use crate::domain::SkuId;
use redis::{ScriptInvocation, Value};
use std::sync::LazyLock;

static SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../../lua/trim.lua")));

/// Drops the entries of a SKU's stream that the commit worker's group has
/// acknowledged, keeping pending and undelivered ones.
#[derive(Debug, Clone)]
pub struct Trim {
    pub sku: SkuId,
}

/// What a trim did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    /// Entries dropped.
    pub trimmed: u64,
    /// Entries left: pending, or not yet delivered. None left means no
    /// consumer, dead or alive, holds anything of the stream.
    pub left: u64,
}

impl Script for Trim {
    type Reply = Trimmed;

    fn name(&self) -> &'static str {
        "trim"
    }

    fn invocation(&self, prefix: &str) -> ScriptInvocation<'static> {
        let mut invocation = SCRIPT.key(Keys::new(prefix).events(&self.sku));
        invocation.arg(CONSUMER_GROUP);
        invocation
    }

    fn decode(&self, reply: Value) -> Result<Self::Reply, GateError> {
        let reply = Fields::parse(self.name(), reply)?;
        match reply.outcome()?.as_str() {
            "trimmed" => Ok(Trimmed {
                trimmed: reply.unsigned("trimmed")?,
                left: reply.unsigned("left")?,
            }),
            _ => Err(reply.unexpected()),
        }
    }
}
