//! The reaper: expires holds whose time has passed and returns their units,
//! in Redis atomically (expire.lua) and in the ledger through the events the
//! script appends. Expiring twice is a no-op, and confirm, release and the
//! reaper race safely because each settles a hold only while it is `held`.

use crate::app::{AdmissionMode, AppError, Dropgate};
use crate::gate::{Expire, Expired, Fenced};
use std::time::Duration;
use tokio::sync::watch;

/// Holds expired per script call; bounds the time one call blocks Redis.
const EXPIRE_BATCH: usize = 200;

/// Ticks this often so a hold is expired well within 1 s of `expires_at`.
pub const REAP_INTERVAL: Duration = Duration::from_millis(200);

pub struct Reaper {
    app: Dropgate,
}

impl Reaper {
    pub fn new(app: Dropgate) -> Self {
        Self { app }
    }

    /// Expires every due hold of every SKU; returns how many it expired.
    /// With Postgres deciding admissions, its holds are expired there. While
    /// Redis is away nothing expires: the gate decides, and a hold expired
    /// behind its back could be confirmed there a moment later.
    pub async fn run_once(&self) -> Result<u64, AppError> {
        match self.app.admission() {
            AdmissionMode::Postgres => {
                Ok(u64::try_from(self.app.ledger.expire_due_direct().await?).unwrap_or(0))
            }
            AdmissionMode::Redis => self.expire_in_gate().await,
        }
    }

    async fn expire_in_gate(&self) -> Result<u64, AppError> {
        let gate = &self.app.gate;
        let mut expired = 0;
        for sku in gate.skus().await? {
            loop {
                let batch = Expire::new(sku.clone(), EXPIRE_BATCH, self.app.now_ms());
                // A SKU closed for a rebuild comes back with its holds as the
                // ledger has them; the next tick expires those.
                let Fenced::Open(Expired {
                    expired: now_expired,
                    still_due,
                }) = gate.expire(&batch).await?
                else {
                    break;
                };
                expired += now_expired;
                if still_due == 0 || now_expired == 0 {
                    break;
                }
            }
        }
        if expired > 0 {
            metrics::counter!("dropgate_holds_expired_total").increment(expired);
        }
        Ok(expired)
    }

    pub async fn run(self, stop: watch::Receiver<bool>) {
        crate::periodic::every(REAP_INTERVAL, stop, "reaper", || self.run_once()).await;
    }
}
