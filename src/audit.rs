//! `dropgate audit`: checks every invariant across the gate and the ledger
//! and reports per SKU. Brings the ledger up to the gate's stream position
//! first (as the worker would), so gate and ledger are compared at a fence.

use crate::app::{AppError, Dropgate};
use crate::domain::SkuId;
use redis::AsyncCommands;
use serde::Serialize;
use sqlx::Row;

#[derive(Debug, Clone, Serialize)]
pub struct SkuAudit {
    pub sku: SkuId,
    pub on_hand: i64,
    pub held: i64,
    pub sold: i64,
    pub gate_held: Option<i64>,
    pub gate_sold: Option<i64>,
    pub live_holds_gate: Option<i64>,
    pub live_holds_ledger: i64,
    /// Every invariant this SKU breaks, in words.
    pub breaches: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub skus: Vec<SkuAudit>,
    /// Breaches not tied to one SKU.
    pub breaches: Vec<String>,
}

impl AuditReport {
    pub fn ok(&self) -> bool {
        self.breaches.is_empty() && self.skus.iter().all(|s| s.breaches.is_empty())
    }

    /// A fixed-width table for people.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<24} {:>9} {:>9} {:>9} {:>10} {:>10}  {}\n",
            "sku", "on_hand", "held", "sold", "live(gate)", "live(pg)", "result"
        );
        for s in &self.skus {
            let gate = s
                .live_holds_gate
                .map_or_else(|| "-".to_owned(), |n| n.to_string());
            let result = if s.breaches.is_empty() {
                "ok".to_owned()
            } else {
                s.breaches.join("; ")
            };
            out += &format!(
                "{:<24} {:>9} {:>9} {:>9} {:>10} {:>10}  {}\n",
                s.sku.as_str(),
                s.on_hand,
                s.held,
                s.sold,
                gate,
                s.live_holds_ledger,
                result
            );
        }
        for breach in &self.breaches {
            out += &format!("BREACH: {breach}\n");
        }
        out += if self.ok() {
            "audit passed\n"
        } else {
            "audit FAILED\n"
        };
        out
    }
}

pub async fn audit(app: &Dropgate) -> Result<AuditReport, AppError> {
    let pool = app.ledger.pool();
    let mut report = AuditReport {
        skus: Vec::new(),
        breaches: Vec::new(),
    };
    let map = |e: sqlx::Error| AppError::Ledger(e.into());

    let duplicate_events: i64 =
        sqlx::query_scalar("SELECT count(*) - count(DISTINCT event_id) FROM movements")
            .fetch_one(pool)
            .await
            .map_err(map)?;
    if duplicate_events != 0 {
        report.breaches.push(format!(
            "{duplicate_events} duplicate event ids in movements"
        ));
    }
    let double_settled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT hold_id FROM movements
           WHERE kind IN ('confirm', 'release', 'expire') AND held_delta <> 0
           GROUP BY hold_id HAVING count(*) > 1) twice",
    )
    .fetch_one(pool)
    .await
    .map_err(map)?;
    if double_settled != 0 {
        report
            .breaches
            .push(format!("{double_settled} holds settled more than once"));
    }

    for sku in app.ledger.all_skus().await? {
        let snapshot = app.gate.snapshot(&sku.sku).await?;
        if let Some(last) = snapshot.and_then(|s| s.last) {
            app.flush(&sku.sku, Some(last)).await?;
        }
        let row = sqlx::query(
            "SELECT s.on_hand, s.held, s.sold,
                    coalesce(sum(m.quantity_delta), 0)::int8 AS m_on_hand,
                    coalesce(sum(m.held_delta), 0)::int8 AS m_held,
                    coalesce(sum(m.sold_delta), 0)::int8 AS m_sold,
                    (SELECT coalesce(sum(quantity), 0)::int8 FROM holds h WHERE h.sku = s.sku AND h.state = 'held') AS h_held,
                    (SELECT coalesce(sum(quantity), 0)::int8 FROM holds h WHERE h.sku = s.sku AND h.state = 'confirmed') AS h_sold,
                    (SELECT count(*) FROM holds h WHERE h.sku = s.sku AND h.state = 'held') AS live
             FROM skus s LEFT JOIN movements m ON m.sku = s.sku
             WHERE s.sku = $1 GROUP BY s.sku",
        )
        .bind(sku.sku.as_str())
        .fetch_one(pool)
        .await
        .map_err(map)?;
        let get = |name: &str| row.try_get::<i64, _>(name).map_err(map);
        let (on_hand, held, sold) = (get("on_hand")?, get("held")?, get("sold")?);
        let mut breaches = Vec::new();
        if held < 0 || sold < 0 || held + sold > on_hand {
            breaches.push(format!("held {held} + sold {sold} > on_hand {on_hand}"));
        }
        if (get("m_on_hand")?, get("m_held")?, get("m_sold")?) != (on_hand, held, sold) {
            breaches.push(format!(
                "counters differ from the sum of movements ({}, {}, {})",
                get("m_on_hand")?,
                get("m_held")?,
                get("m_sold")?
            ));
        }
        if (get("h_held")?, get("h_sold")?) != (held, sold) {
            breaches.push(format!(
                "holds sum to held {} sold {}",
                get("h_held")?,
                get("h_sold")?
            ));
        }
        let live_ledger = get("live")?;
        let (mut gate_held, mut gate_sold, mut live_gate) = (None, None, None);
        if let Some(gate) = app.gate.sku(&sku.sku).await? {
            let live: i64 = app
                .gate
                .connection()
                .zcard(app.gate.keys().expiry(&sku.sku))
                .await
                .map_err(crate::gate::GateError::from)?;
            if (gate.held, gate.sold, gate.on_hand) != (held, sold, on_hand) {
                breaches.push(format!(
                    "gate has on_hand {} held {} sold {}",
                    gate.on_hand, gate.held, gate.sold
                ));
            }
            if live != live_ledger {
                breaches.push(format!(
                    "{live} live holds in the gate, {live_ledger} in the ledger"
                ));
            }
            (gate_held, gate_sold, live_gate) = (Some(gate.held), Some(gate.sold), Some(live));
        }
        report.skus.push(SkuAudit {
            sku: sku.sku,
            on_hand,
            held,
            sold,
            gate_held,
            gate_sold,
            live_holds_gate: live_gate,
            live_holds_ledger: live_ledger,
            breaches,
        });
    }
    Ok(report)
}
