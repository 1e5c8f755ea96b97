//! Admitting one hold: `lua/admit.lua`.

use super::reply::Fields;
use super::script::{Fenced, Script};
use super::{Activity, GateError, MAX_EVENT_BACKLOG, keys::Keys};
use crate::domain::{
    Admission, CustomerId, HoldId, IDEMPOTENCY_TTL_MS, IdempotencyKey, Quantity, SkuId,
    decode_outcome, fingerprint,
};
use redis::{ScriptInvocation, Value};
use std::sync::LazyLock;
use uuid::Uuid;

static SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../../lua/admit.lua")));

/// Asks for `quantity` units of `sku` for `customer`, named by the client's
/// idempotency `key`.
#[derive(Debug, Clone)]
pub struct Admit {
    pub sku: SkuId,
    /// The id the hold gets if it is admitted now.
    pub hold_id: HoldId,
    /// The id of the `admit` event, if the hold is admitted now.
    pub event_id: Uuid,
    pub customer: CustomerId,
    pub quantity: Quantity,
    pub key: IdempotencyKey,
    /// What makes a retry "the same request" (see `domain::fingerprint`).
    pub fingerprint: String,
    /// Refuse while the SKU's stream holds this many uncommitted events.
    pub backlog_limit: i64,
}

impl Admit {
    /// An admission with a fresh event id, the request's own fingerprint
    /// and the service's backlog limit.
    pub fn new(
        sku: SkuId,
        hold_id: HoldId,
        customer: CustomerId,
        quantity: Quantity,
        key: IdempotencyKey,
    ) -> Self {
        Self {
            fingerprint: fingerprint(&customer, quantity),
            sku,
            hold_id,
            event_id: Uuid::new_v4(),
            customer,
            quantity,
            key,
            backlog_limit: MAX_EVENT_BACKLOG,
        }
    }
}

/// What admit.lua answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmitReply {
    pub admission: Admission,
    /// The SKU has 0 available (with `sold_out`): a gatekeeper may answer
    /// the next admissions itself (see `sold_out`).
    pub none_left: bool,
}

impl Script for Admit {
    type Reply = Fenced<AdmitReply>;

    fn name(&self) -> &'static str {
        "admit"
    }

    fn invocation(&self, prefix: &str) -> ScriptInvocation<'static> {
        let k = Keys::new(prefix);
        let sku = &self.sku;
        let mut invocation = SCRIPT.key(k.stock(sku));
        invocation
            .key(k.idempotency(sku, self.key.as_str()))
            .key(k.customer(sku, self.customer.as_str()))
            .key(k.hold(sku, self.hold_id))
            .key(k.expiry(sku))
            .key(k.events(sku))
            .key(k.closed(sku))
            .arg(self.hold_id.to_string())
            .arg(self.event_id.to_string())
            .arg(self.customer.as_str())
            .arg(self.quantity.get())
            .arg(&self.fingerprint)
            .arg(IDEMPOTENCY_TTL_MS)
            .arg(self.key.as_str())
            .arg(self.backlog_limit);
        invocation
    }

    fn decode(&self, reply: Value) -> Result<Self::Reply, GateError> {
        decode(Fields::parse(self.name(), reply)?)
    }

    /// Only a new hold appends an event; it falls due at its expiry.
    fn activity(&self, reply: &Self::Reply) -> Option<Activity<'_>> {
        match reply {
            Fenced::Open(AdmitReply {
                admission: Admission::Held { expires_at_ms, .. },
                ..
            }) => Some(Activity {
                sku: &self.sku,
                due_ms: Some(*expires_at_ms),
            }),
            _ => None,
        }
    }
}

/// An admission's reply, as admit.lua and each of admit_batch.lua's give it.
pub(super) fn decode(reply: Fields) -> Result<Fenced<AdmitReply>, GateError> {
    let outcome = reply.outcome()?;
    let none_left = outcome == "sold_out" && reply.int("available")? <= 0;
    let admission = match outcome.as_str() {
        "held" => Admission::Held {
            hold_id: HoldId::parse(&reply.text("hold_id")?)
                .ok_or_else(|| GateError::protocol("admit: bad hold_id"))?,
            expires_at_ms: reply.int("expires_at_ms")?,
        },
        "replay" => {
            let record = reply.text("record")?;
            let first = decode_outcome(&record)
                .ok_or_else(|| GateError::protocol(format!("bad idempotency record {record:?}")))?;
            Admission::Replayed(Box::new(first))
        }
        "reused" => Admission::KeyReused,
        "sold_out" => Admission::sold_out(reply.int("retry_after_ms")?),
        "limit" => Admission::LimitExceeded {
            limit: reply.int("limit")?,
            already: reply.int("already")?,
        },
        "no_sku" => Admission::UnknownSku,
        "backlog" => Admission::Backlogged,
        "closed" => return Ok(Fenced::Closed),
        _ => return Err(reply.unexpected()),
    };
    Ok(Fenced::Open(AdmitReply {
        admission,
        none_left,
    }))
}
