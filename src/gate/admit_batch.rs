//! Admitting a batch of holds for one SKU in one call: `lua/admit_batch.lua`.
//! Each admission gets exactly the outcome it would get alone; the SKU's
//! stock hash is read and written once and the batch's admissions go out as
//! one stream entry. [`Gate::admit`](super::Gate::admit) forms the batches
//! (see `batcher`).

use super::admit::{Admit, AdmitReply, decode};
use super::reply::Fields;
use super::script::{Fenced, Script};
use super::{Activity, GateError, keys::Keys};
use crate::domain::{Admission, IDEMPOTENCY_TTL_MS, SkuId};
use redis::{ScriptInvocation, Value};
use std::sync::LazyLock;

static SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../../lua/admit_batch.lua")));

/// Admissions of one SKU, decided in this order.
#[derive(Debug, Clone)]
pub struct AdmitBatch {
    pub sku: SkuId,
    pub admissions: Vec<Admit>,
    /// Refuse while the SKU's stream holds this many uncommitted events.
    pub backlog_limit: i64,
}

impl Script for AdmitBatch {
    /// One reply per admission, in order.
    type Reply = Vec<Fenced<AdmitReply>>;

    fn name(&self) -> &'static str {
        "admit_batch"
    }

    fn invocation(&self, prefix: &str) -> ScriptInvocation<'static> {
        let k = Keys::new(prefix);
        let sku = &self.sku;
        let mut invocation = SCRIPT.key(k.stock(sku));
        invocation
            .key(k.expiry(sku))
            .key(k.events(sku))
            .key(k.closed(sku))
            .arg(IDEMPOTENCY_TTL_MS)
            .arg(self.backlog_limit);
        for admit in &self.admissions {
            invocation
                .key(k.idempotency(sku, admit.key.as_str()))
                .key(k.customer(sku, admit.customer.as_str()))
                .key(k.hold(sku, admit.hold_id))
                .arg(admit.hold_id.to_string())
                .arg(admit.event_id.to_string())
                .arg(admit.customer.as_str())
                .arg(admit.quantity.get())
                .arg(&admit.fingerprint)
                .arg(admit.key.as_str());
        }
        invocation
    }

    fn decode(&self, reply: Value) -> Result<Self::Reply, GateError> {
        let Value::Array(replies) = reply else {
            return Err(GateError::protocol("admit_batch: reply is not a list"));
        };
        if replies.len() != self.admissions.len() {
            return Err(GateError::protocol(format!(
                "admit_batch: {} replies for {} admissions",
                replies.len(),
                self.admissions.len()
            )));
        }
        replies
            .into_iter()
            .map(|reply| decode(Fields::parse(self.name(), reply)?))
            .collect()
    }

    /// New holds append one event entry; the earliest falls due first.
    fn activity(&self, reply: &Self::Reply) -> Option<Activity<'_>> {
        reply
            .iter()
            .filter_map(|reply| match reply {
                Fenced::Open(AdmitReply {
                    admission: Admission::Held { expires_at_ms, .. },
                    ..
                }) => Some(*expires_at_ms),
                _ => None,
            })
            .min()
            .map(|due_ms| Activity {
                sku: &self.sku,
                due_ms: Some(due_ms),
            })
    }
}
