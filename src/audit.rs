//! `dropgate audit`: checks every invariant across the gate and the ledger
//! and reports per SKU. Brings the ledger up to the gate's stream position
//! first (as the worker would), so gate and ledger are compared at a fence.

use crate::app::{AppError, Dropgate};
use crate::domain::{SkuId, Stock};
use serde::Serialize;

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
    let mut report = AuditReport {
        skus: Vec::new(),
        breaches: Vec::new(),
    };
    let checks = app.ledger.checks().await?;
    if checks.duplicate_events != 0 {
        report.breaches.push(format!(
            "{} duplicate event ids in movements",
            checks.duplicate_events
        ));
    }
    if checks.double_settled != 0 {
        report.breaches.push(format!(
            "{} holds settled more than once",
            checks.double_settled
        ));
    }

    let ledger_skus = app.ledger.all_skus().await?;
    let known: std::collections::BTreeSet<&SkuId> = ledger_skus.iter().map(|s| &s.sku).collect();
    for sku in app.gate.skus().await? {
        if !known.contains(&sku) {
            report
                .breaches
                .push(format!("the gate has SKU {sku}, the ledger does not"));
        }
    }
    let dead_letters = app.ledger.open_dead_letters().await?;
    if dead_letters > 0 {
        report.breaches.push(format!(
            "{dead_letters} events set aside as dead letters (dropgate dead-letters list)"
        ));
    }

    for sku in ledger_skus {
        let mut breaches = Vec::new();
        // Compare at a fence; a SKU whose stream cannot be brought into the
        // ledger is a breach of its own, and the audit goes on.
        let snapshot = app.gate.snapshot(&sku.sku).await?;
        if let Some(last) = snapshot.and_then(|s| s.last)
            && let Err(error) = app.flush(&sku.sku, Some(last)).await
        {
            breaches.push(format!(
                "its events could not be brought into the ledger: {error}"
            ));
        }
        let Some(checks) = app.ledger.sku_checks(&sku.sku).await? else {
            continue;
        };
        let Stock {
            on_hand,
            held,
            sold,
        } = checks.counters;
        if !checks.counters.is_consistent() {
            breaches.push(format!("held {held} + sold {sold} > on_hand {on_hand}"));
        }
        if checks.movements != checks.counters {
            let m = checks.movements;
            breaches.push(format!(
                "counters differ from the sum of movements ({}, {}, {})",
                m.on_hand, m.held, m.sold
            ));
        }
        if checks.holds != checks.counters {
            breaches.push(format!(
                "holds sum to held {} sold {}",
                checks.holds.held, checks.holds.sold
            ));
        }
        let live_ledger = checks.live_holds;
        let (mut gate_held, mut gate_sold, mut live_gate) = (None, None, None);
        if let Some(gate) = app.gate.sku(&sku.sku).await? {
            let live = app.gate.live_holds(&sku.sku).await?;
            if !gate.stock.drift(checks.counters).is_zero() {
                breaches.push(format!(
                    "gate has on_hand {} held {} sold {}",
                    gate.stock.on_hand, gate.stock.held, gate.stock.sold
                ));
            }
            if live != live_ledger {
                breaches.push(format!(
                    "{live} live holds in the gate, {live_ledger} in the ledger"
                ));
            }
            (gate_held, gate_sold, live_gate) =
                (Some(gate.stock.held), Some(gate.stock.sold), Some(live));
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
