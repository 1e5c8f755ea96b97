//! The reconciler: runs continuously, and per SKU compares the gate's
//! figures with the ledger's at a fence: it snapshots the gate's counters
//! together with its stream position, brings the ledger up to exactly that
//! position, and compares. After the fence they must match; a difference is
//! a defect or tampering. The ledger wins: the gate is corrected (only if
//! nothing moved since the fence) and a `reconcile` movement records what was
//! found and changed. It also rebuilds the gate when Redis lost its data.

use crate::app::{AppError, Dropgate};
use crate::domain::{HoldState, SkuId};
use crate::gate::Fenced;
use std::time::Duration;
use tokio::sync::watch;

/// A ledger hold this far past its expiry should have been settled.
const ORPHAN_GRACE_MS: i64 = 5_000;

/// How often the holds-by-state gauge is refreshed.
const HOLD_COUNT_INTERVAL: Duration = Duration::from_secs(15);

/// How often every SKU is compared.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);

/// A difference found at a fence, gate minus ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub sku: SkuId,
    pub on_hand: i64,
    pub held: i64,
    pub sold: i64,
    /// Whether the gate was corrected this round.
    pub repaired: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    pub checked: usize,
    pub drift: Vec<Drift>,
    /// SKUs that could not be checked this pass.
    pub failed: Vec<SkuId>,
}

pub struct Reconciler {
    app: Dropgate,
    /// Counting holds by state scans the table: done now and then only.
    holds_counted_at: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Reconciler {
    pub fn new(app: Dropgate) -> Self {
        Self {
            app,
            holds_counted_at: std::sync::Mutex::new(None),
        }
    }

    /// One pass over every SKU.
    pub async fn run_once(&self) -> Result<ReconcileReport, AppError> {
        crate::rebuild::ensure_gate(&self.app).await?;
        let mut report = ReconcileReport::default();
        let counted_recently = self
            .holds_counted_at
            .lock()
            .ok()
            .and_then(|at| *at)
            .is_some_and(|at| at.elapsed() < HOLD_COUNT_INTERVAL);
        if !counted_recently {
            let open = self.app.ledger.open_dead_letters().await?;
            metrics::gauge!("dropgate_ledger_dead_letters_open").set(open as f64);
            for (state, holds) in self.app.ledger.holds_by_state().await? {
                metrics::gauge!("dropgate_holds", "state" => state).set(holds as f64);
            }
            if let Ok(mut at) = self.holds_counted_at.lock() {
                *at = Some(std::time::Instant::now());
            }
        }
        // Each SKU on its own: one that fails (a store error, a bad event)
        // is reported and the pass goes on with the others.
        for sku in self.app.ledger.all_skus().await? {
            match self.check(&sku.sku).await {
                Ok(Some(drift)) => report.drift.push(drift),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(sku = %sku.sku, %error, "reconciler could not check the SKU");
                    metrics::counter!("dropgate_reconciler_errors_total").increment(1);
                    report.failed.push(sku.sku.clone());
                    continue;
                }
            }
            report.checked += 1;
        }
        Ok(report)
    }

    /// Holds the ledger still has as `held` long after their expiry, while
    /// the gate settled them: their settling event was lost. The ledger takes
    /// the gate's outcome (or `expired` if the gate forgot the hold), with a
    /// movement saying why. Returns how many were settled.
    pub async fn settle_orphans(&self, sku: &SkuId) -> Result<u64, AppError> {
        let overdue = self
            .app
            .ledger
            .overdue_holds(sku, ORPHAN_GRACE_MS, 500)
            .await?;
        if overdue.is_empty() {
            return Ok(0);
        }
        // Whatever is still in the stream is not an orphan: apply it first.
        self.app.flush(sku, None).await?;
        let mut settled = 0;
        for hold_id in overdue {
            let to = match self.app.gate.hold(sku, hold_id).await? {
                Some(hold) if hold.state == HoldState::Held => continue,
                Some(hold) => hold.state,
                None => HoldState::Expired,
            };
            if self.app.ledger.settle_orphan(sku, hold_id, to).await? {
                tracing::warn!(%sku, %hold_id, state = to.as_str(), "reconciler settled a hold whose event was lost");
                settled += 1;
            }
        }
        Ok(settled)
    }

    async fn check(&self, sku: &SkuId) -> Result<Option<Drift>, AppError> {
        self.settle_orphans(sku).await?;
        let Some(snapshot) = self.app.gate.snapshot(sku).await? else {
            return Ok(None);
        };
        if snapshot.last.is_some() {
            self.app.flush(sku, snapshot.last).await?;
        }
        let Some(ledger) = self.app.ledger.sku(sku).await? else {
            return Ok(None);
        };
        if snapshot.last.is_some_and(|fence| ledger.applied < fence) {
            // The ledger could not reach the fence (events missing from the
            // stream); comparing now would report a false drift.
            tracing::warn!(%sku, "ledger behind the fence; not compared");
            return Ok(None);
        }
        let drift = Drift {
            sku: sku.clone(),
            on_hand: snapshot.on_hand - ledger.figures.stock.on_hand,
            held: snapshot.held - ledger.figures.stock.held,
            sold: snapshot.sold - ledger.figures.stock.sold,
            repaired: false,
        };
        let label = sku.to_string();
        metrics::gauge!("dropgate_stream_backlog_events", "sku" => label.clone())
            .set(snapshot.backlog as f64);
        metrics::gauge!("dropgate_reconciler_drift_units", "sku" => label.clone(), "counter" => "on_hand")
            .set(drift.on_hand as f64);
        metrics::gauge!("dropgate_reconciler_drift_units", "sku" => label.clone(), "counter" => "held")
            .set(drift.held as f64);
        metrics::gauge!("dropgate_reconciler_drift_units", "sku" => label, "counter" => "sold")
            .set(drift.sold as f64);
        if (drift.on_hand, drift.held, drift.sold) == (0, 0, 0) {
            return Ok(None);
        }
        let repaired = self
            .app
            .gate
            .repair(sku, &snapshot, ledger.figures.stock)
            .await?
            == Fenced::Open(true);
        if repaired {
            let reason = format!(
                "gate had on_hand {} held {} sold {}; set to the ledger's on_hand {} held {} sold {}",
                snapshot.on_hand, snapshot.held, snapshot.sold, ledger.figures.stock.on_hand, ledger.figures.stock.held, ledger.figures.stock.sold
            );
            self.app.ledger.record_reconcile(sku, &reason).await?;
            metrics::counter!("dropgate_reconciler_repairs_total").increment(1);
            tracing::warn!(%sku, %reason, "reconciler repaired drift");
        }
        Ok(Some(Drift { repaired, ..drift }))
    }

    pub async fn run(self, stop: watch::Receiver<bool>) {
        crate::periodic::every(RECONCILE_INTERVAL, stop, "reconciler", || self.run_once()).await;
    }
}
