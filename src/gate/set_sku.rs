//! Changing a SKU's stock: creating it, replacing its settings (`PUT`) or
//! adjusting its on_hand, `lua/set_sku.lua`.

use super::reply::Fields;
use super::script::{Fenced, Script};
use super::{Activity, CONSUMER_GROUP, GateError, keys::Keys};
use crate::domain::{IDEMPOTENCY_TTL_MS, SkuFigures, SkuId, SkuSettings, Stock};
use redis::{ScriptInvocation, Value};
use std::sync::LazyLock;
use uuid::Uuid;

static SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../../lua/set_sku.lua")));

/// How to change a SKU's stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockChange {
    /// Creates the SKU (numbered `sku_no` in the ledger) or replaces its
    /// settings and on_hand.
    Put { settings: SkuSettings, sku_no: u32 },
    /// Adds `delta` (possibly negative) to on_hand.
    Adjust { delta: i64 },
}

/// Changes a SKU's stock and records the movement with `reason`.
#[derive(Debug, Clone)]
pub struct SetSku {
    pub sku: SkuId,
    pub change: StockChange,
    pub reason: String,
    pub event_id: Uuid,
    /// The gate epoch, kept by a SKU created now.
    pub epoch: i64,
    /// The client's `Idempotency-Key` and the change's fingerprint: a
    /// change made with a key is remembered, and a retry replays it.
    pub idempotency: Option<(String, String)>,
}

impl SetSku {
    pub fn new(sku: SkuId, change: StockChange, reason: &str, epoch: i64) -> Self {
        Self {
            sku,
            change,
            reason: reason.to_owned(),
            event_id: Uuid::new_v4(),
            epoch,
            idempotency: None,
        }
    }

    /// Remembers the change under the client's key, with `fingerprint`.
    pub fn with_key(mut self, key: &str, fingerprint: String) -> Self {
        self.idempotency = Some((key.to_owned(), fingerprint));
        self
    }
}

/// What a stock change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkuChange {
    Created(SkuFigures),
    Updated(SkuFigures),
    /// on_hand would fall below held + sold (or rise above the maximum).
    Conflict {
        requested: i64,
        held: i64,
        sold: i64,
    },
    UnknownSku,
    /// The idempotency key's first answer (`created` tells which).
    Replayed {
        created: bool,
        figures: SkuFigures,
    },
    /// The idempotency key was used for another change.
    KeyReused,
}

impl Script for SetSku {
    type Reply = Fenced<SkuChange>;

    fn name(&self) -> &'static str {
        "set_sku"
    }

    fn invocation(&self, prefix: &str) -> ScriptInvocation<'static> {
        let k = Keys::new(prefix);
        let mut invocation = SCRIPT.key(k.stock(&self.sku));
        invocation.key(k.events(&self.sku)).key(k.closed(&self.sku));
        let sku_no = match self.change {
            StockChange::Put { settings, sku_no } => {
                invocation
                    .arg("put")
                    .arg(settings.on_hand)
                    .arg(settings.per_customer_limit)
                    .arg(settings.hold_ttl_ms)
                    .arg(settings.max_extensions);
                sku_no
            }
            StockChange::Adjust { delta } => {
                invocation.arg("adjust").arg(delta).arg("").arg("").arg("");
                0
            }
        };
        invocation
            .arg(self.event_id.to_string())
            .arg(self.epoch)
            .arg(sku_no)
            .arg(&self.reason)
            .arg(CONSUMER_GROUP);
        if let Some((key, fingerprint)) = &self.idempotency {
            invocation
                .key(k.admin_idempotency(&self.sku, key))
                .arg(fingerprint)
                .arg(IDEMPOTENCY_TTL_MS);
        }
        invocation
    }

    fn decode(&self, reply: Value) -> Result<Self::Reply, GateError> {
        let reply = Fields::parse(self.name(), reply)?;
        let figures = || -> Result<SkuFigures, GateError> {
            Ok(SkuFigures {
                stock: Stock {
                    on_hand: reply.int("on_hand")?,
                    held: reply.int("held")?,
                    sold: reply.int("sold")?,
                },
                per_customer_limit: reply.int("limit")?,
                hold_ttl_ms: reply.int("ttl_ms")?,
                max_extensions: reply.int("max_ext")?,
            })
        };
        Ok(Fenced::Open(match reply.outcome()?.as_str() {
            "created" => SkuChange::Created(figures()?),
            "updated" => SkuChange::Updated(figures()?),
            "conflict" => SkuChange::Conflict {
                requested: reply.int("requested")?,
                held: reply.int("held")?,
                sold: reply.int("sold")?,
            },
            "no_sku" => SkuChange::UnknownSku,
            "replay" => SkuChange::Replayed {
                created: reply.text("first")? == "created",
                figures: figures()?,
            },
            "reused" => SkuChange::KeyReused,
            "closed" => return Ok(Fenced::Closed),
            _ => return Err(reply.unexpected()),
        }))
    }

    fn activity(&self, reply: &Self::Reply) -> Option<Activity<'_>> {
        matches!(
            reply,
            Fenced::Open(SkuChange::Created(_) | SkuChange::Updated(_))
        )
        .then_some(Activity {
            sku: &self.sku,
            due_ms: None,
        })
    }
}
