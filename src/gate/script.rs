//! What every script of `lua/` has in common: a typed request that builds the
//! script's KEYS and ARGV, and a typed reply read from the script's named
//! fields. Each script lives in its own module (`admit`, `settle`, …), like
//! the commands of mini-redis.
//!
//! `redis::Script` runs a script with EVALSHA and loads it on NOSCRIPT, so a
//! Redis restart or a SCRIPT FLUSH costs one extra round trip, not an error.

use super::{Activity, GateError};
use redis::{ScriptInvocation, Value};

/// One script call. [`Gate`](super::Gate) runs these; the benchmark runs
/// them over other connection setups to compare them.
pub trait Script {
    type Reply;

    /// What the call is called in metrics (`script` label) and errors.
    fn name(&self) -> &'static str;

    /// The script with this request's KEYS and ARGV, for the deployment
    /// whose keys start with `prefix`.
    fn invocation(&self, prefix: &str) -> ScriptInvocation<'static>;

    /// The script's reply, read by its named fields.
    fn decode(&self, reply: Value) -> Result<Self::Reply, GateError>;

    /// What the call left for the background services: `Some` when it
    /// appended an event to the SKU's stream (and created a hold that
    /// will fall due). The gate publishes it as a hint (see `activity`).
    fn activity(&self, _reply: &Self::Reply) -> Option<Activity<'_>> {
        None
    }
}

/// The reply of a script that changes a SKU. Such a script acts only while
/// the SKU is open: a SKU closed for a rebuild (see
/// [`Gate::close_sku`](super::Gate::close_sku)) is left untouched, and the
/// caller answers "unavailable, retry".
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Fenced<T> {
    Open(T),
    /// The SKU is closed; the script read and wrote nothing of it.
    Closed,
}

impl<T> Fenced<T> {
    /// The reply, or `None` when the SKU was closed.
    pub fn open(self) -> Option<T> {
        match self {
            Self::Open(reply) => Some(reply),
            Self::Closed => None,
        }
    }
}

/// The helpers of `lua/hold_lib.lua` prepended to `body`: every hold script
/// still runs as one atomic EVALSHA.
pub(super) fn with_hold_lib(body: &str) -> redis::Script {
    redis::Script::new(&format!(
        "{}\n{body}",
        include_str!("../../lua/hold_lib.lua")
    ))
}
