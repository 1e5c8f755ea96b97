//! Building the gate from the ledger: on a fresh Redis, or after Redis lost
//! its data. While the epoch key is missing the gate is closed: admissions
//! answer 503 and `/readyz` says why. The rebuild starts a new epoch, so
//! events of the lost gate that still reach the ledger are fenced off, and
//! holds it admitted that never reached the ledger answer `lost`.

use crate::app::{AppError, Dropgate};
use crate::telemetry::metric;

/// Serializes rebuilds across dropgate processes (Postgres advisory lock).
const REBUILD_LOCK: i64 = 0x6472_6f70_6761_7465; // "dropgate"

/// Makes sure the gate is built; builds it from the ledger when the epoch
/// key is missing. Returns the gate epoch.
pub async fn ensure_gate(app: &Dropgate) -> Result<i64, AppError> {
    if let Some(epoch) = app.gate.epoch().await? {
        return Ok(epoch);
    }
    let mut lock = app
        .ledger
        .pool()
        .acquire()
        .await
        .map_err(crate::ledger::LedgerError::from)?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(REBUILD_LOCK)
        .execute(&mut *lock)
        .await
        .map_err(crate::ledger::LedgerError::from)?;
    let built = rebuild_locked(app).await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(REBUILD_LOCK)
        .execute(&mut *lock)
        .await;
    built
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
        // When only part of Redis was lost, whatever the stream still holds
        // goes to the ledger first, so the rebuild loses nothing it had.
        if let Err(error) = app.flush(&sku.sku, None).await {
            tracing::debug!(sku = %sku.sku, %error, "no stream to flush before the rebuild");
        }
        let source = app.ledger.gate_source(sku, epoch).await?;
        app.gate.rebuild_sku(&source).await?;
    }
    app.gate.set_epoch(epoch).await?;
    metrics::counter!(metric::GATE_REBUILDS_TOTAL).increment(1);
    Ok(epoch)
}
