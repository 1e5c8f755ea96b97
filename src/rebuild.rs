//! Building the gate from the ledger: on a fresh Redis, or after Redis lost
//! its data. While the epoch key is missing the gate is closed: admissions
//! answer 503 and `/readyz` says why. The rebuild starts a new epoch, so
//! events of the lost gate that still reach the ledger are fenced off, and
//! holds it admitted that never reached the ledger answer `lost`.

use crate::app::{AppError, Dropgate};

/// Makes sure the gate is built; builds it from the ledger when the epoch
/// key is missing. Returns the gate epoch.
pub async fn ensure_gate(app: &Dropgate) -> Result<i64, AppError> {
    if let Some(epoch) = app.gate.epoch().await? {
        return Ok(epoch);
    }
    app.ledger.with_rebuild_lock(rebuild_locked(app)).await
}

async fn rebuild_locked(app: &Dropgate) -> Result<i64, AppError> {
    // Another process may have rebuilt it while we waited for the lock.
    if let Some(epoch) = app.gate.epoch().await? {
        return Ok(epoch);
    }
    let skus = app.ledger.all_skus().await?;
    let reason = if skus.is_empty() {
        "gate built"
    } else {
        "gate rebuilt from the ledger"
    };
    let epoch = app.ledger.start_epoch(reason).await?;
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
        // intact, and the next attempt starts over.
        app.gate.close_sku(&sku.sku).await?;
        app.flush(&sku.sku, None).await?;
        let snapshot = app.ledger.snapshot_for_epoch(&sku.sku, epoch).await?;
        app.gate.rebuild_sku(&snapshot, app.now_ms()).await?;
    }
    app.gate.set_epoch(epoch).await?;
    metrics::counter!("dropgate_gate_rebuilds_total").increment(1);
    Ok(epoch)
}
