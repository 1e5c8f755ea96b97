//! Building the gate from the ledger: on a fresh Redis, after Redis lost its
//! data, or when the gate in Redis was built from another ledger (a new
//! `DATABASE_URL` on the same Redis, a restored backup). While the epoch key
//! is missing the gate is closed: admissions answer 503 and `/readyz` says
//! why. The rebuild starts a new epoch, so events of the old gate that still
//! reach the ledger are fenced off, and holds it admitted that never reached
//! the ledger answer `lost`.

use crate::app::{AppError, Dropgate};
use crate::domain::SkuId;
use crate::telemetry::metric;
use std::collections::BTreeSet;

/// Why the gate in Redis cannot be served as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stale {
    /// No epoch key: a fresh Redis, or Redis lost its data.
    Missing,
    /// Built from a ledger with another id, or from a later state of this
    /// one (its epoch is ahead of every epoch this ledger started).
    Foreign { epoch: i64 },
}

/// Makes sure the gate is built from this ledger; (re)builds it when not.
/// Returns the gate epoch.
pub async fn ensure_gate(app: &Dropgate) -> Result<i64, AppError> {
    match staleness(app).await? {
        Ok(epoch) => Ok(epoch),
        Err(_) => app.ledger.with_rebuild_lock(rebuild_locked(app)).await,
    }
}

/// `Ok(epoch)` when the gate is built from this ledger, else why not.
async fn staleness(app: &Dropgate) -> Result<Result<i64, Stale>, AppError> {
    let Some(epoch) = app.gate.epoch().await? else {
        return Ok(Err(Stale::Missing));
    };
    let ours = app.ledger.ledger_id().await?;
    let from = app.gate.built_from().await?;
    if from != Some(ours) || epoch > app.ledger.epoch().await? {
        return Ok(Err(Stale::Foreign { epoch }));
    }
    Ok(Ok(epoch))
}

async fn rebuild_locked(app: &Dropgate) -> Result<i64, AppError> {
    // Another process may have rebuilt it while we waited for the lock.
    let stale = match staleness(app).await? {
        Ok(epoch) => return Ok(epoch),
        Err(stale) => stale,
    };
    let skus = app.ledger.all_skus().await?;
    let above = match stale {
        Stale::Missing => 0,
        Stale::Foreign { epoch } => {
            record_foreign_gate(app, &skus, epoch).await?;
            epoch
        }
    };
    let reason = match (stale, skus.is_empty()) {
        (Stale::Foreign { .. }, _) => "gate rebuilt: Redis held a gate built from another ledger",
        (Stale::Missing, true) => "gate built",
        (Stale::Missing, false) => "gate rebuilt from the ledger",
    };
    let epoch = app.ledger.start_epoch(reason, above).await?;
    if skus.is_empty() {
        tracing::info!(epoch, "{reason}");
    } else {
        tracing::warn!(epoch, skus = skus.len(), "{reason}");
    }
    for sku in &skus {
        // Closed first: from here no script changes the SKU, so its stream
        // holds every event it will ever have. When only part of Redis was
        // lost, the flush takes what the stream still holds to the ledger,
        // and the snapshot after it misses nothing. Should the flush fail,
        // the rebuild stops here: the SKU stays closed (503) and the stream
        // intact, and the next attempt starts over. A foreign gate's events
        // are not this ledger's: never applied.
        app.gate.close_sku(&sku.sku).await?;
        if stale == Stale::Missing {
            app.flush(&sku.sku, None).await?;
        }
        let snapshot = app.ledger.snapshot_for_epoch(&sku.sku, epoch).await?;
        app.gate.rebuild_sku(&snapshot).await?;
    }
    app.gate
        .set_built(epoch, app.ledger.ledger_id().await?)
        .await?;
    metrics::counter!(metric::GATE_REBUILDS_TOTAL).increment(1);
    Ok(epoch)
}

/// Says loudly what the foreign gate had, as `reconcile` movements for the
/// SKUs this ledger has, and drops the SKUs it does not have (their
/// admissions were never this ledger's).
async fn record_foreign_gate(
    app: &Dropgate,
    skus: &[crate::ledger::LedgerSku],
    epoch: i64,
) -> Result<(), AppError> {
    let ours: BTreeSet<&SkuId> = skus.iter().map(|s| &s.sku).collect();
    for sku in app.gate.skus().await? {
        if !ours.contains(&sku) {
            tracing::error!(%sku, gate_epoch = epoch,
                "the gate in Redis has a SKU this ledger does not know: dropped from the gate");
            metrics::counter!(crate::telemetry::metric::GATE_FOREIGN_SKUS_DROPPED_TOTAL)
                .increment(1);
            app.gate.drop_sku(&sku).await?;
        }
    }
    for sku in skus {
        let Some(gate) = app.gate.sku(&sku.sku).await? else {
            continue;
        };
        let drift = gate.stock.drift(sku.figures.stock);
        if drift.is_zero() {
            continue;
        }
        let reason = format!(
            "gate in Redis was built from another ledger (epoch {epoch}): it had on_hand {} held {} \
             sold {}; rebuilt from this ledger's on_hand {} held {} sold {}",
            gate.stock.on_hand,
            gate.stock.held,
            gate.stock.sold,
            sku.figures.stock.on_hand,
            sku.figures.stock.held,
            sku.figures.stock.sold
        );
        tracing::error!(sku = %sku.sku, %reason);
        app.ledger.record_reconcile(&sku.sku, &reason).await?;
    }
    Ok(())
}

/// Writes one SKU the ledger has and the built gate does not (a `PUT` whose
/// gate step never ran after the ledger made its row, a key evicted), from
/// the ledger, with an epoch of its own. False when the gate has it after
/// all (created or restored meanwhile).
pub async fn restore_sku(app: &Dropgate, sku: &SkuId) -> Result<bool, AppError> {
    app.ledger
        .with_rebuild_lock(async {
            if app.gate.sku(sku).await?.is_some() || app.ledger.sku(sku).await?.is_none() {
                return Ok(false);
            }
            // Closed first, as in a full rebuild: a change that lands now
            // answers 503 rather than being overwritten.
            app.gate.close_sku(sku).await?;
            app.flush(sku, None).await?;
            let reason = format!("SKU {sku} restored: the gate did not have it");
            let epoch = app.ledger.start_epoch(&reason, 0).await?;
            let snapshot = app.ledger.snapshot_for_epoch(sku, epoch).await?;
            app.gate.rebuild_sku(&snapshot).await?;
            tracing::warn!(%sku, epoch, "{reason}");
            metrics::counter!(crate::telemetry::metric::GATE_SKUS_RESTORED_TOTAL).increment(1);
            Ok(true)
        })
        .await
}
