//! The reaper: expires holds whose time has passed and returns their units,
//! in Redis atomically (expire.lua) and in the ledger through the events the
//! script appends. Expiring twice is a no-op, and confirm, release and the
//! reaper race safely because each settles a hold only while it is `held`.

use crate::app::{AdmissionMode, AppError, Dropgate};
use crate::clock::SharedClock;
use crate::gate::{Expire, Expired, Fenced};
use crate::telemetry::metric;
use std::time::Duration;
use tokio::sync::watch;

/// How the reaper runs; tests tune it.
#[derive(Clone)]
pub struct Config {
    /// Time between passes: a hold is expired within this of `expires_at`.
    pub interval: Duration,
    /// Holds expired per script call; bounds the time one call blocks Redis.
    pub batch_max_holds: usize,
    /// The "now" that decides which holds are due; `None` is the app's
    /// clock. Holds only Postgres knows are due by Postgres's own clock.
    pub clock: Option<SharedClock>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            // Ticks this often so a hold is expired well within 1 s of `expires_at`.
            interval: Duration::from_millis(200),
            batch_max_holds: 200,
            clock: None,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("interval", &self.interval)
            .field("batch_max_holds", &self.batch_max_holds)
            .finish_non_exhaustive()
    }
}

pub struct Reaper {
    app: Dropgate,
    config: Config,
}

impl Reaper {
    pub fn new(app: Dropgate) -> Self {
        Self::with_config(app, Config::default())
    }

    pub fn with_config(app: Dropgate, config: Config) -> Self {
        Self { app, config }
    }

    /// Expires every due hold of every SKU; returns how many it expired.
    pub async fn run_once(&self) -> Result<u64, AppError> {
        let now_ms = match &self.config.clock {
            Some(clock) => clock.now_ms(),
            None => self.app.now_ms(),
        };
        self.run_once_at(now_ms).await
    }

    /// [`run_once`](Self::run_once) as if the gate's clock read `now_ms`.
    /// With Postgres deciding admissions, its holds are expired there. While
    /// Redis is away nothing expires: the gate decides, and a hold expired
    /// behind its back could be confirmed there a moment later.
    pub async fn run_once_at(&self, now_ms: i64) -> Result<u64, AppError> {
        match self.app.admission() {
            AdmissionMode::Postgres => {
                Ok(u64::try_from(self.app.ledger.expire_due_direct().await?).unwrap_or(0))
            }
            AdmissionMode::Redis => self.expire_in_gate(now_ms).await,
        }
    }

    async fn expire_in_gate(&self, now_ms: i64) -> Result<u64, AppError> {
        let gate = &self.app.gate;
        let mut expired = 0;
        for sku in gate.skus().await? {
            loop {
                let batch = Expire::new(sku.clone(), self.config.batch_max_holds, now_ms);
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
            metrics::counter!(metric::HOLDS_EXPIRED_TOTAL).increment(expired);
        }
        Ok(expired)
    }

    pub async fn run(self, stop: watch::Receiver<bool>) {
        crate::periodic::every(self.config.interval, stop, "reaper", || self.run_once()).await;
    }
}
