//! The service layer: every operation of dropgate, across the gate and the
//! ledger. The HTTP layer parses requests into domain values, calls these,
//! and maps the outcomes; the background services (worker, reaper,
//! reconciler) call these too, and this layer never calls them.
//!
//! * [`admission`]: admitting holds.
//! * [`holds`]: reading, confirming, releasing and extending holds.
//! * [`stock`]: reading SKUs and changing their stock (PUT, adjustments).
//! * [`flush`]: writing a SKU's events to the ledger inline.
//!
//! Who decides admissions and hold transitions is fixed per process
//! ([`AdmissionMode`]) and chosen once per call, at the top of each
//! operation.

mod admission;
mod flush;
mod hold_ids;
mod holds;
mod stock;

use crate::domain::{Hold, HoldId, SkuId, ms_from_time, time_from_ms};
use crate::gate::{Gate, GateError, GateHold};
use crate::ledger::{Ledger, LedgerError};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

pub use admission::Admitted;
pub use holds::HoldOutcome;
pub use stock::SkuOutcome;

/// Who decides admissions and hold transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AdmissionMode {
    /// The gate (Redis, Lua): the product.
    #[default]
    Redis,
    /// Postgres alone, one conditional UPDATE per admission: the benchmark
    /// peer, slow and correct.
    Postgres,
}

/// Infrastructure failures; each maps to 503 `unavailable` or an opaque 500.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Gate(#[from] GateError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The gate is being rebuilt from the ledger.
    #[error("the gate is not built")]
    GateNotBuilt,
    /// The gate has the SKU but the ledger does not: nothing it admits
    /// could be recorded, so it admits nothing.
    #[error("the ledger does not know this SKU")]
    UnknownToLedger,
    /// The operation's store timeout ran out while it waited for this
    /// store. What it did stands, and a retry completes it.
    #[error("{0} did not answer within the store timeout")]
    OutOfTime(&'static str),
}

impl AppError {
    /// Which dependency failed, for the client (never the error text).
    pub fn dependency(&self) -> &'static str {
        match self {
            Self::Gate(_) | Self::GateNotBuilt => "redis",
            Self::Ledger(_) | Self::UnknownToLedger => "postgres",
            Self::OutOfTime(dependency) => dependency,
        }
    }
}

#[derive(Clone)]
pub struct Dropgate {
    pub gate: Gate,
    pub ledger: Ledger,
    /// Issues hold ids and tells ours from forged ones.
    hold_ids: Arc<hold_ids::HoldIds>,
    /// SKU → its ledger number, needed to mint hold ids. Never changes.
    sku_numbers: Arc<RwLock<HashMap<SkuId, u32>>>,
    /// Replicas that must have an admission before it is answered, and for
    /// how long to wait for them (ms); `None` answers from the primary.
    replica_wait: Option<(u32, u64)>,
    admission: AdmissionMode,
    /// Per SKU: the furthest stream position this process saw the ledger
    /// apply, behind a lock that queues concurrent flushes of the SKU.
    flushed: flush::FlushSlots,
    /// SKUs whose events the worker found but the ledger does not know:
    /// their events stay in the stream, and `/readyz` names them.
    unknown_skus: Arc<RwLock<BTreeSet<SkuId>>>,
}

impl Dropgate {
    /// Both stores' service; loads the ledger's hold id key.
    pub async fn open(gate: Gate, ledger: Ledger) -> Result<Self, AppError> {
        let hold_ids = Arc::new(hold_ids::HoldIds::load(&ledger).await?);
        Ok(Self {
            gate,
            ledger,
            hold_ids,
            sku_numbers: Arc::default(),
            replica_wait: None,
            admission: AdmissionMode::Redis,
            flushed: Arc::default(),
            unknown_skus: Arc::default(),
        })
    }

    /// The hold `uuid` names, if this ledger's gatekeepers issued it: any
    /// other UUID names no hold, whatever the stores hold.
    pub fn hold_id(&self, uuid: uuid::Uuid) -> Option<HoldId> {
        self.hold_ids.verify(uuid)
    }

    /// Records the SKUs the worker found unknown to the ledger (replacing
    /// the last finding).
    pub fn set_unknown_skus(&self, skus: BTreeSet<SkuId>) {
        metrics::gauge!(crate::telemetry::metric::LEDGER_UNKNOWN_SKUS).set(skus.len() as f64);
        if let Ok(mut unknown) = self.unknown_skus.write() {
            *unknown = skus;
        }
    }

    fn is_unknown_to_ledger(&self, sku: &SkuId) -> bool {
        self.unknown_skus
            .read()
            .is_ok_and(|unknown| unknown.contains(sku))
    }

    /// SKUs the gate has events for but the ledger does not know.
    pub fn unknown_skus(&self) -> Vec<SkuId> {
        self.unknown_skus
            .read()
            .map(|unknown| unknown.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Lets the gate answer `sold_out` itself for a SKU it said has 0
    /// available, for at most `max_age` (see `gate::SoldOutCache`).
    pub fn with_sold_out_cache(mut self, max_age: std::time::Duration) -> Self {
        self.gate = self.gate.with_sold_out_cache(max_age);
        self
    }

    /// Admissions of one SKU per script call at most (see `gate::batcher`).
    pub fn with_admit_batch_max(mut self, max: usize) -> Self {
        self.gate = self.gate.with_admit_batch_max(max);
        self
    }

    pub fn with_admission(mut self, admission: AdmissionMode) -> Self {
        self.admission = admission;
        self
    }

    /// Makes admissions wait (Redis WAIT) for `replicas` replicas.
    pub fn with_replica_wait(mut self, replicas: u32, timeout_ms: u64) -> Self {
        self.replica_wait = (replicas > 0).then_some((replicas, timeout_ms));
        self
    }

    pub fn admission(&self) -> AdmissionMode {
        self.admission
    }

    /// The gate epoch; `GateNotBuilt` while it is being rebuilt.
    async fn require_gate(&self) -> Result<i64, AppError> {
        self.gate.epoch().await?.ok_or(AppError::GateNotBuilt)
    }

    /// The SKU's ledger number as the gate recorded it (cached).
    async fn sku_no(&self, sku: &SkuId) -> Result<Option<u32>, AppError> {
        if let Some(no) = self
            .sku_numbers
            .read()
            .ok()
            .and_then(|m| m.get(sku).copied())
        {
            return Ok(Some(no));
        }
        let no = self.gate.sku_number(sku).await?;
        if let (Some(no), Ok(mut map)) = (no, self.sku_numbers.write()) {
            map.insert(sku.clone(), no);
        }
        Ok(no)
    }

    /// The SKU owning a hold id: the gate says, or the ledger when Postgres
    /// decides.
    async fn sku_of(&self, hold_id: HoldId) -> Result<Option<SkuId>, AppError> {
        Ok(match self.admission {
            AdmissionMode::Postgres => self.ledger.sku_by_no(hold_id.sku_no()).await?,
            AdmissionMode::Redis => self.gate.sku_of(hold_id).await?,
        })
    }
}

/// This machine's clock, for what decides nothing: the commit lag it
/// reports. Every decision by time reads
/// the clock of the store that decides (DESIGN.md "One clock"): Redis's,
/// inside the scripts, or Postgres's `now()` for the Postgres-direct peer.
fn machine_ms() -> i64 {
    ms_from_time(time::OffsetDateTime::now_utc())
}

/// A hold as the gate has it, in the shape dropgate answers with.
fn hold_view(hold_id: HoldId, sku: &SkuId, hold: &GateHold, durable: bool) -> Hold {
    Hold {
        hold_id,
        sku: sku.clone(),
        customer_id: Some(hold.customer_id.clone()),
        quantity: hold.quantity,
        state: hold.state,
        expires_at: time_from_ms(hold.expires_at_ms),
        extensions: hold.extensions,
        durable,
    }
}
