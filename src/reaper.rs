//! The reaper: expires holds whose time has passed and returns their units,
//! in Redis atomically (expire.lua) and in the ledger through the events the
//! script appends. Expiring twice is a no-op, and confirm, release and the
//! reaper race safely because each settles a hold only while it is `held`.
//!
//! Redis's clock decides what is due, as it decides everything by time
//! (DESIGN.md "One clock"): the script expires the holds due by `TIME`, and
//! each pass reads the SKUs' due times against Redis's `TIME` too, so
//! reapers whose machines' clocks disagree expire exactly the same holds.
//!
//! Work follows activity: each pass runs the script only for the SKUs the
//! due set names as due now (see `gate::activity`), not for every SKU. The
//! due set holds, per SKU, a time at or before its earliest live hold's
//! expiry: an admission hints its hold's expiry (`ZADD LT` keeps the
//! earliest), and the reaper, after expiring a SKU's due holds, hints the
//! SKU's next expiry, which the script returns. It takes a SKU off the set
//! *before* running the script, so a hold admitted meanwhile (whose hint is
//! published after its admission) is either seen by the script or hinted
//! afresh; a SKU is never taken off with a live hold unaccounted for.
//! A hint that is lost anyway (a gatekeeper that died before publishing,
//! Redis losing the set) is made good by a sweep: each pass reads the
//! earliest expiry of a few SKUs, round the whole catalogue, and hints it.

use crate::app::{AdmissionMode, AppError, Dropgate};
use crate::domain::SkuId;
use crate::gate::{Expire, Expired, Fenced};
use crate::sweep::Sweep;
use crate::telemetry::metric;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::sync::watch;

/// How the reaper runs; tests tune it.
#[derive(Debug, Clone)]
pub struct Config {
    /// Time between passes: a hold is expired within this of `expires_at`.
    pub interval: Duration,
    /// Holds expired per script call; bounds the time one call blocks Redis.
    pub batch_max_holds: usize,
    /// SKUs handled per pass at most; the rest are due at the next pass.
    pub due_skus_per_pass: usize,
    /// SKUs whose earliest expiry the sweep reads per pass (one `ZRANGE`
    /// each). A lost due hint is made good within `catalogue / sweep_skus`
    /// passes.
    pub sweep_skus: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            // Ticks this often so a hold is expired well within 1 s of `expires_at`.
            interval: Duration::from_millis(200),
            batch_max_holds: 200,
            due_skus_per_pass: 1000,
            sweep_skus: 6,
        }
    }
}

pub struct Reaper {
    app: Dropgate,
    config: Config,
    /// Where the sweep is in the catalogue; one pass at a time uses it.
    sweep: tokio::sync::Mutex<Sweep>,
}

impl Reaper {
    pub fn new(app: Dropgate) -> Self {
        Self::with_config(app, Config::default())
    }

    pub fn with_config(app: Dropgate, config: Config) -> Self {
        Self {
            app,
            config,
            sweep: tokio::sync::Mutex::new(Sweep::new()),
        }
    }

    /// Expires every due hold of every SKU that is due; returns how many it
    /// expired. With Postgres deciding admissions, its holds are expired
    /// there, by Postgres's clock. While Redis is away nothing expires: the
    /// gate decides, and a hold expired behind its back could be confirmed
    /// there a moment later.
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
        // This process's own admissions first: their hints may still be
        // waiting for the publisher.
        gate.publish_activity().await?;
        let now_ms = gate.time_ms().await?;
        let mut due: BTreeSet<SkuId> = BTreeSet::new();
        let slice = self
            .sweep
            .lock()
            .await
            .next(gate, self.config.sweep_skus)
            .await?;
        for (sku, earliest) in slice.iter().zip(gate.earliest_expiries(&slice).await?) {
            match earliest {
                Some(at) if at <= now_ms => {
                    due.insert(sku.clone());
                }
                Some(at) => gate.hint_due(sku, at),
                None => {}
            }
        }
        let hinted = gate.due_skus(now_ms, self.config.due_skus_per_pass).await?;
        gate.take_due(&hinted).await?;
        due.extend(hinted);

        let mut expired = 0;
        // Each SKU on its own: one that fails is hinted again (retried next
        // pass) and the others go on.
        for sku in &due {
            match self.expire_sku(sku).await {
                Ok((now_expired, next_due)) => {
                    expired += now_expired;
                    if let Some(at) = next_due {
                        gate.hint_due(sku, at);
                    }
                }
                Err(error) => {
                    tracing::warn!(%sku, %error, "reaper could not expire the SKU's holds");
                    gate.hint_due(sku, now_ms);
                }
            }
        }
        if expired > 0 {
            metrics::counter!(metric::HOLDS_EXPIRED_TOTAL).increment(expired);
        }
        // The next due times, and the events just appended, for the worker.
        gate.publish_activity().await?;
        Ok(expired)
    }

    /// Expires a SKU's due holds in bounded batches; returns how many, and
    /// when its next live hold falls due. A SKU closed for a rebuild comes
    /// back with its holds as the ledger has them, hinted by the rebuild.
    async fn expire_sku(&self, sku: &SkuId) -> Result<(u64, Option<i64>), AppError> {
        let mut expired = 0;
        loop {
            let batch = Expire::new(sku.clone(), self.config.batch_max_holds);
            let Fenced::Open(Expired {
                expired: now_expired,
                still_due,
                next_due_ms,
            }) = self.app.gate.expire(&batch).await?
            else {
                return Ok((expired, None));
            };
            expired += now_expired;
            if still_due == 0 || now_expired == 0 {
                return Ok((expired, next_due_ms));
            }
        }
    }

    pub async fn run(self, stop: watch::Receiver<bool>) {
        crate::periodic::every(self.config.interval, stop, "reaper", || self.run_once()).await;
    }
}
