//! The reconciler: runs continuously, and per SKU compares the gate's
//! figures with the ledger's at a fence: it snapshots the gate's counters
//! together with its stream position, brings the ledger up to exactly that
//! position, and compares. After the fence they must match; a difference is
//! a defect or tampering. The ledger wins: the gate is corrected (only if
//! nothing moved since the fence) and a `reconcile` movement records what was
//! found and changed. It also rebuilds the gate when Redis lost its data.
//!
//! Each pass checks the SKUs that moved since the last pass (named by the
//! activity hints, see `gate::activity`) and a slice of the whole
//! catalogue ([`Sweep`]), so a catalogue of idle SKUs costs a bounded
//! number of checks per pass, and drift that no event announces (tampering,
//! a lost hint) is found within one round of the sweep. Holds the ledger
//! still has as `held` long after their expiry (their settling event was
//! lost) are looked for across all SKUs in one query per pass.

use crate::app::{AppError, Dropgate};
use crate::domain::{HoldId, HoldState, SkuId, Stock};
use crate::gate::{ActivityCursor, Fenced, Snapshot};
use crate::ledger::LedgerSku;
use crate::sweep::Sweep;
use crate::telemetry::metric;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::sync::watch;

/// Activity entries read per call, and calls per pass at most.
const HINT_ENTRIES_PER_READ: usize = 100;
const HINT_READS_PER_PASS: usize = 10;

/// SKUs whose ledger rows are read in one query.
const CHECK_CHUNK: usize = 100;

/// Overdue holds settled per pass at most.
const ORPHANS_PER_ROUND: i64 = 500;

/// How the reconciler runs; tests tune it.
#[derive(Debug, Clone)]
pub struct Config {
    /// Time between passes.
    pub interval: Duration,
    /// A ledger hold this far past its expiry should have been settled.
    pub orphan_grace: Duration,
    /// How often the holds-by-state gauge is refreshed: counting scans the
    /// table, so it is done now and then only.
    pub hold_count_interval: Duration,
    /// SKUs that moved checked per pass at most; the rest wait for the next.
    pub active_skus_per_pass: usize,
    /// SKUs of the catalogue checked per pass besides those that moved: one
    /// snapshot each, their ledger rows in one query. Drift no event
    /// announces is found within `catalogue / sweep_skus` passes. A snapshot
    /// is one script of five Redis commands, so this is most of what an idle
    /// catalogue costs Redis: the default, 16 a second, is about 80 of the
    /// 200 commands/s an idle catalogue may cost (README, Performance), and
    /// looks at each of 10,000 SKUs about every 10 minutes.
    pub sweep_skus: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            orphan_grace: Duration::from_secs(5),
            hold_count_interval: Duration::from_secs(15),
            active_skus_per_pass: 1000,
            sweep_skus: 16,
        }
    }
}

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
    /// SKUs checked that the built gate does not have.
    pub missing: Vec<SkuId>,
}

pub struct Reconciler {
    app: Dropgate,
    config: Config,
    /// When holds were last counted by state (see `hold_count_interval`).
    holds_counted_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// What one pass leaves the next; one pass at a time holds it.
    progress: tokio::sync::Mutex<Progress>,
}

#[derive(Default)]
struct Progress {
    /// Where we are in the activity stream.
    hints: ActivityCursor,
    /// SKUs that moved and wait for their check: beyond one pass's bound,
    /// or their last check failed.
    active: BTreeSet<SkuId>,
    sweep: Sweep,
    /// The round over the ledger's SKUs, which finds the ones the gate's
    /// registry lacks (a `PUT` cut between the ledger and the gate).
    ledger_after: Option<SkuId>,
    /// SKUs the last pass found missing from the gate.
    missing: BTreeSet<SkuId>,
}

impl Reconciler {
    pub fn new(app: Dropgate) -> Self {
        Self::with_config(app, Config::default())
    }

    pub fn with_config(app: Dropgate, config: Config) -> Self {
        Self {
            app,
            config,
            holds_counted_at: std::sync::Mutex::new(None),
            progress: tokio::sync::Mutex::default(),
        }
    }

    /// One pass: the SKUs that moved since the last pass, and the sweep's
    /// next slice of the catalogue.
    pub async fn run_once(&self) -> Result<ReconcileReport, AppError> {
        crate::rebuild::ensure_gate(&self.app).await?;
        let gate = &self.app.gate;
        // This process's own hints first: they may still wait for the
        // publisher.
        gate.publish_activity().await?;
        let mut report = ReconcileReport::default();
        let counted_recently = self
            .holds_counted_at
            .lock()
            .ok()
            .and_then(|at| *at)
            .is_some_and(|at| at.elapsed() < self.config.hold_count_interval);
        if !counted_recently {
            let open = self.app.ledger.open_dead_letters().await?;
            metrics::gauge!(crate::telemetry::metric::LEDGER_DEAD_LETTERS_OPEN).set(open as f64);
            for (state, holds) in self.app.ledger.holds_by_state().await? {
                metrics::gauge!(metric::HOLDS, "state" => state).set(holds as f64);
            }
            if let Ok(mut at) = self.holds_counted_at.lock() {
                *at = Some(std::time::Instant::now());
            }
        }
        let mut progress = self.progress.lock().await;
        self.settle_all_orphans().await?;
        for _ in 0..HINT_READS_PER_PASS {
            let hinted = gate
                .hints(&mut progress.hints, HINT_ENTRIES_PER_READ)
                .await?;
            if hinted.is_empty() {
                break;
            }
            progress.active.extend(hinted);
        }
        let mut skus = BTreeSet::new();
        while skus.len() < self.config.active_skus_per_pass {
            let Some(sku) = progress.active.pop_first() else {
                break;
            };
            skus.insert(sku);
        }
        // The sweep's budget is shared by two rounds: the gate's registry
        // and the ledger's SKUs (which finds those the registry lacks).
        let from_ledger = (self.config.sweep_skus / 2).max(1);
        let from_gate = self.config.sweep_skus.saturating_sub(from_ledger);
        skus.extend(progress.sweep.next(gate, from_gate).await?);
        let page = self
            .app
            .ledger
            .skus(progress.ledger_after.as_ref(), from_ledger as i64)
            .await?;
        progress.ledger_after = match page.last() {
            Some(last) if page.len() == from_ledger => Some(last.sku.clone()),
            _ => None,
        };
        skus.extend(page.into_iter().map(|row| row.sku));
        // Those the last pass found missing from the gate are looked at
        // again now, whichever page of the sweep found them: still missing,
        // they are restored below.
        skus.extend(progress.missing.iter().cloned());
        // Each SKU on its own: one that fails (a store error, a bad event)
        // is reported, checked again next pass, and the others go on.
        let skus: Vec<SkuId> = skus.into_iter().collect();
        for chunk in skus.chunks(CHECK_CHUNK) {
            self.check_all(chunk, &mut report).await;
        }
        // A SKU the ledger has and the built gate lacked two passes running
        // would never be admitted or changed again: write it from the
        // ledger. One pass is not enough: a PUT creating a SKU makes the
        // ledger's row a moment before the gate's.
        let missing: BTreeSet<SkuId> = report.missing.iter().cloned().collect();
        for sku in missing.intersection(&progress.missing) {
            if let Err(error) = crate::rebuild::restore_sku(&self.app, sku).await {
                self.failed(sku, &error, &mut report);
            }
        }
        progress.missing = missing;
        progress.active.extend(report.failed.iter().cloned());
        Ok(report)
    }

    /// Settles the overdue holds of every SKU (see
    /// [`settle_orphans`](Self::settle_orphans)), SKU by SKU.
    async fn settle_all_orphans(&self) -> Result<(), AppError> {
        let grace_ms = i64::try_from(self.config.orphan_grace.as_millis()).unwrap_or(i64::MAX);
        let mut overdue: BTreeMap<SkuId, Vec<HoldId>> = BTreeMap::new();
        for (sku, hold_id) in self
            .app
            .ledger
            .overdue_holds_anywhere(grace_ms, ORPHANS_PER_ROUND)
            .await?
        {
            overdue.entry(sku).or_default().push(hold_id);
        }
        for (sku, holds) in overdue {
            if let Err(error) = self.settle_overdue(&sku, holds).await {
                tracing::warn!(%sku, %error, "reconciler could not settle the SKU's overdue holds");
                metrics::counter!(crate::telemetry::metric::RECONCILER_ERRORS_TOTAL).increment(1);
            }
        }
        Ok(())
    }

    /// Holds the ledger still has as `held` long after their expiry, while
    /// the gate settled them: their settling event was lost. The ledger takes
    /// the gate's outcome (or `expired` if the gate forgot the hold), with a
    /// movement saying why. Returns how many were settled.
    pub async fn settle_orphans(&self, sku: &SkuId) -> Result<u64, AppError> {
        let grace_ms = i64::try_from(self.config.orphan_grace.as_millis()).unwrap_or(i64::MAX);
        let overdue = self
            .app
            .ledger
            .overdue_holds(sku, grace_ms, ORPHANS_PER_ROUND)
            .await?;
        self.settle_overdue(sku, overdue).await
    }

    /// Settles the SKU's `overdue` ledger holds the way the gate settled
    /// them; returns how many.
    async fn settle_overdue(&self, sku: &SkuId, overdue: Vec<HoldId>) -> Result<u64, AppError> {
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

    /// Checks `skus`: their snapshots one by one, their ledger rows in one
    /// query, then each comparison.
    async fn check_all(&self, skus: &[SkuId], report: &mut ReconcileReport) {
        let mut snapshots = Vec::with_capacity(skus.len());
        for sku in skus {
            match self.app.gate.snapshot(sku).await {
                Ok(Some(snapshot)) => snapshots.push((sku, snapshot)),
                // Not in the built gate (or closed for a rebuild, or being
                // created right now): noted, and restored from the ledger if
                // still missing a pass later.
                Ok(None) => {
                    report.missing.push((*sku).clone());
                    report.checked += 1;
                }
                Err(error) => self.failed(sku, &error.into(), report),
            }
        }
        if snapshots.is_empty() {
            return;
        }
        let names: Vec<SkuId> = snapshots.iter().map(|(sku, _)| (*sku).clone()).collect();
        let mut rows = match self.app.ledger.skus_named(&names).await {
            Ok(rows) => rows,
            Err(error) => {
                let error = AppError::from(error);
                for sku in &names {
                    self.failed(sku, &error, report);
                }
                return;
            }
        };
        for (sku, snapshot) in snapshots {
            match self.check(sku, snapshot, rows.remove(sku)).await {
                Ok(drift) => {
                    report.drift.extend(drift);
                    report.checked += 1;
                }
                Err(error) => self.failed(sku, &error, report),
            }
        }
    }

    fn failed(&self, sku: &SkuId, error: &AppError, report: &mut ReconcileReport) {
        tracing::warn!(%sku, %error, "reconciler could not check the SKU");
        metrics::counter!(crate::telemetry::metric::RECONCILER_ERRORS_TOTAL).increment(1);
        report.failed.push(sku.clone());
    }

    /// Compares a SKU's `snapshot` with its ledger `row` (read after the
    /// snapshot), once the ledger has reached the snapshot's fence.
    async fn check(
        &self,
        sku: &SkuId,
        snapshot: Snapshot,
        row: Option<LedgerSku>,
    ) -> Result<Option<Drift>, AppError> {
        let ledger = match row {
            None => return Ok(None),
            Some(row) if snapshot.last.is_some_and(|fence| row.applied < fence) => {
                self.app.flush(sku, snapshot.last).await?;
                match self.app.ledger.sku(sku).await? {
                    Some(row) => row,
                    None => return Ok(None),
                }
            }
            Some(row) => row,
        };
        if snapshot.last.is_some_and(|fence| ledger.applied < fence) {
            // The ledger could not reach the fence (events missing from the
            // stream); comparing now would report a false drift.
            tracing::warn!(%sku, "ledger behind the fence; not compared");
            return Ok(None);
        }
        let gate = Stock {
            on_hand: snapshot.on_hand,
            held: snapshot.held,
            sold: snapshot.sold,
        };
        let difference = gate.drift(ledger.figures.stock);
        let drift = Drift {
            sku: sku.clone(),
            on_hand: difference.on_hand,
            held: difference.held,
            sold: difference.sold,
            repaired: false,
        };
        // Per-SKU gauges only for labelled SKUs: one shared "other" gauge
        // would only show whichever SKU was checked last.
        let label = crate::telemetry::sku_label(sku);
        if label != crate::telemetry::OTHER_SKUS {
            metrics::gauge!(metric::STREAM_BACKLOG_EVENTS, "sku" => label.clone())
                .set(snapshot.backlog as f64);
            metrics::gauge!(metric::RECONCILER_DRIFT_UNITS, "sku" => label.clone(), "counter" => "on_hand")
                .set(drift.on_hand as f64);
            metrics::gauge!(metric::RECONCILER_DRIFT_UNITS, "sku" => label.clone(), "counter" => "held")
                .set(drift.held as f64);
            metrics::gauge!(metric::RECONCILER_DRIFT_UNITS, "sku" => label, "counter" => "sold")
                .set(drift.sold as f64);
        }
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
                snapshot.on_hand,
                snapshot.held,
                snapshot.sold,
                ledger.figures.stock.on_hand,
                ledger.figures.stock.held,
                ledger.figures.stock.sold
            );
            self.app.ledger.record_reconcile(sku, &reason).await?;
            metrics::counter!(metric::RECONCILER_REPAIRS_TOTAL).increment(1);
            tracing::warn!(%sku, %reason, "reconciler repaired drift");
        }
        Ok(Some(Drift { repaired, ..drift }))
    }

    pub async fn run(self, stop: watch::Receiver<bool>) {
        crate::periodic::every(self.config.interval, stop, "reconciler", || self.run_once()).await;
    }
}
