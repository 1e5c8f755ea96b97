//! Building the gate: on a fresh Redis, or after Redis lost its data, the
//! gate is rebuilt from the ledger before admission opens.

use crate::app::{AppError, Dropgate};

/// Makes sure the gate is built; builds it from the ledger when the epoch
/// key is missing. Returns the gate epoch.
pub async fn ensure_gate(app: &Dropgate) -> Result<i64, AppError> {
    if let Some(epoch) = app.gate.epoch().await? {
        return Ok(epoch);
    }
    let epoch = app.ledger.epoch().await?;
    app.gate.set_epoch(epoch).await?;
    Ok(epoch)
}
