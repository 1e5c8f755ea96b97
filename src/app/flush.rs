//! Writing a SKU's events to the ledger inline, the way the worker does,
//! for the operations whose answer needs the ledger (confirm, stock
//! changes, the reconciler's fence).

use super::{AppError, Dropgate};
use crate::domain::{Position, SkuId};
use crate::ledger::ApplyReport;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Events read from a stream per ledger transaction when catching up inline.
const FLUSH_BATCH_EVENTS: usize = 1000;

/// Per SKU: the furthest position this process saw applied, behind a lock
/// that queues concurrent flushes of the SKU.
pub(super) type FlushSlots =
    Arc<std::sync::Mutex<HashMap<SkuId, Arc<tokio::sync::Mutex<Option<Position>>>>>>;

impl Dropgate {
    /// Writes a SKU's events to the ledger up to `up_to` (or all of them),
    /// the same way the worker does. Safe beside a running worker.
    ///
    /// Flushes of one SKU queue on a per-SKU lock, and each writes all the
    /// stream has, not just up to its own `up_to`: a burst of confirms costs
    /// a few ledger transactions, and whoever waited finds its event written.
    pub async fn flush(&self, sku: &SkuId, up_to: Option<Position>) -> Result<(), AppError> {
        let slot = self.flush_slot(sku);
        let mut known = slot.lock().await;
        if up_to.is_some_and(|up_to| known.is_some_and(|known| known >= up_to)) {
            return Ok(());
        }
        loop {
            let Some(ledger_sku) = self.ledger.sku(sku).await? else {
                return Ok(());
            };
            *known = Some(ledger_sku.applied);
            if up_to.is_some_and(|up_to| ledger_sku.applied >= up_to) {
                return Ok(());
            }
            let events = self
                .gate
                .events(sku, ledger_sku.applied, None, FLUSH_BATCH_EVENTS)
                .await?;
            let Some(last) = events.last().map(|e| e.position) else {
                return Ok(());
            };
            let complete = events.len() < FLUSH_BATCH_EVENTS;
            let oldest_ms = events.iter().map(|e| e.occurred_at_ms).min();
            let report = self
                .ledger
                .apply(&BTreeMap::from([(sku.clone(), events)]))
                .await?;
            self.applied(&report).await?;
            if let Some(oldest_ms) = oldest_ms {
                self.record_commit_lag(oldest_ms);
            }
            *known = Some(last);
            if up_to.is_none_or(|up_to| last >= up_to) && complete {
                return Ok(());
            }
        }
    }

    fn flush_slot(&self, sku: &SkuId) -> Arc<tokio::sync::Mutex<Option<Position>>> {
        match self.flushed.lock() {
            Ok(mut slots) => slots.entry(sku.clone()).or_default().clone(),
            // A poisoned map only loses the coalescing, never correctness.
            Err(_) => Arc::default(),
        }
    }

    /// Follows up a ledger apply, whoever applied (worker or inline): counts
    /// it, and tells the gate about every admission the ledger refused, so
    /// its units leave `held` there too.
    pub async fn applied(&self, report: &ApplyReport) -> Result<(), AppError> {
        metrics::counter!(crate::telemetry::metric::LEDGER_EVENTS_APPLIED_TOTAL)
            .increment(report.applied);
        metrics::counter!(crate::telemetry::metric::LEDGER_EVENTS_SKIPPED_TOTAL)
            .increment(report.skipped);
        metrics::counter!(crate::telemetry::metric::LEDGER_HOLDS_LOST_TOTAL)
            .increment(report.lost.len() as u64);
        for lost in &report.lost {
            let was = self.gate.lose(&lost.sku, lost.hold_id).await?;
            tracing::error!(sku = %lost.sku, hold_id = %lost.hold_id, quantity = lost.quantity, was = ?was,
                "the ledger refused an admission: hold is lost");
        }
        Ok(())
    }

    /// The commit lag: how old the oldest event of a batch just committed
    /// was. Whoever commits (worker or inline) records it.
    pub fn record_commit_lag(&self, oldest_ms: i64) {
        let lag_ms = (super::machine_ms() - oldest_ms).max(0);
        metrics::gauge!(crate::telemetry::metric::COMMIT_LAG_SECONDS).set(lag_ms as f64 / 1000.0);
    }

    /// `flush` for callers whose answer does not depend on it; true if done.
    pub(super) async fn flush_quietly(&self, sku: &SkuId, up_to: Option<Position>) -> bool {
        if up_to.is_none() {
            return false;
        }
        match self.flush(sku, up_to).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%sku, %error, "ledger write deferred to the worker");
                false
            }
        }
    }
}
