//! The reaper: expires holds whose time has passed and returns their units,
//! in Redis atomically (expire.lua) and in the ledger through the events the
//! script appends. Expiring twice is a no-op, and confirm, release and the
//! reaper race safely because each settles a hold only while it is `held`.

use crate::app::{AppError, Dropgate};
use crate::config::AdmissionMode;
use crate::domain::now_ms;
use crate::telemetry::metric;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Reads the time, unix ms, that decides which holds are due.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// How the reaper runs; tests tune it.
#[derive(Clone)]
pub struct Config {
    /// Time between passes: a hold is expired within this of `expires_at`.
    pub interval: Duration,
    /// Holds expired per script call; bounds the time one call blocks Redis.
    pub batch_max_holds: usize,
    /// The gate's "now". Holds only Postgres knows are due by Postgres's
    /// own clock.
    pub clock: Clock,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            // Ticks this often so a hold is expired well within 1 s of `expires_at`.
            interval: Duration::from_millis(200),
            batch_max_holds: 200,
            clock: Arc::new(now_ms),
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
    /// Holds only Postgres knows (Postgres admission, or admitted in Redis's
    /// place while it was away) are expired there.
    pub async fn run_once(&self) -> Result<u64, AppError> {
        self.run_once_at((self.config.clock)()).await
    }

    /// [`run_once`](Self::run_once) as if the gate's clock read `now_ms`.
    pub async fn run_once_at(&self, now_ms: i64) -> Result<u64, AppError> {
        if self.app.admission() == AdmissionMode::Postgres {
            return Ok(u64::try_from(self.app.ledger.expire_due_direct().await?).unwrap_or(0));
        }
        match self.expire_in_gate(now_ms).await {
            Err(AppError::Gate(error)) if error.is_unavailable() => {
                let expired = self.app.ledger.expire_due_direct().await?;
                Ok(u64::try_from(expired).unwrap_or(0))
            }
            other => other,
        }
    }

    async fn expire_in_gate(&self, now_ms: i64) -> Result<u64, AppError> {
        let gate = &self.app.gate;
        let mut expired = 0;
        for sku in gate.skus().await? {
            loop {
                let (now_expired, still_due) = gate
                    .expire_due(&sku, self.config.batch_max_holds, now_ms)
                    .await?;
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
