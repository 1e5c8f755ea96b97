//! The operations of dropgate, across the gate and the ledger. The HTTP layer
//! parses requests into domain values, calls these, and maps the outcomes.

use crate::config::{AdmissionMode, RedisDown};
use crate::domain::{
    now_ms, time_from_ms, CustomerId, Hold, HoldId, HoldState, IdempotencyKey, Position, Quantity,
    Sku, SkuId, SkuSettings,
};
use crate::gate::{
    Admission, Gate, GateError, GateHold, GateSku, SkuChange, StockChange, Transition,
};
use crate::ledger::DirectTransition;
use crate::ledger::{ApplyReport, Ledger, LedgerError};
use crate::telemetry::metric;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use uuid::Uuid;

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
}

impl AppError {
    /// Which dependency failed, for the client (never the error text).
    pub fn dependency(&self) -> &'static str {
        match self {
            Self::Gate(_) | Self::GateNotBuilt => "redis",
            Self::Ledger(_) => "postgres",
        }
    }
}

/// An admission as the API answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub outcome: Admission,
    /// The hold, when the outcome (or the replayed one) holds units.
    pub hold: Option<Hold>,
}

/// The result of a hold transition as the API answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldOutcome {
    Ok(Hold),
    /// The hold is in a state that forbids the transition.
    Conflict(HoldState),
    ExtensionLimit,
    NotFound,
}

/// The result of a stock change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkuOutcome {
    Created(Sku),
    Updated(Sku),
    Conflict {
        requested: i64,
        held: i64,
        sold: i64,
    },
    NotFound,
}

/// Events read from a stream per ledger transaction when catching up inline.
const FLUSH_BATCH_EVENTS: usize = 1000;

#[derive(Clone)]
pub struct Dropgate {
    pub gate: Gate,
    pub ledger: Ledger,
    /// SKU → its ledger number, needed to mint hold ids. Never changes.
    sku_numbers: Arc<RwLock<HashMap<SkuId, u32>>>,
    /// Replicas that must have an admission before it is answered, and for
    /// how long to wait for them (ms); `None` answers from the primary.
    replica_wait: Option<(u32, u64)>,
    /// Who decides admissions: the gate, or Postgres alone (the peer).
    admission: AdmissionMode,
    /// What admission does while Redis is unreachable.
    redis_down: RedisDown,
    /// Set when Postgres admitted in Redis's place: the gate is stale until
    /// rebuilt from the ledger.
    fallback_used: Arc<AtomicBool>,
    /// Per SKU: the furthest stream position this process saw the ledger
    /// apply, behind a lock that queues concurrent flushes of the SKU.
    flushed: FlushSlots,
}

type FlushSlots = Arc<std::sync::Mutex<HashMap<SkuId, Arc<tokio::sync::Mutex<Option<Position>>>>>>;

impl Dropgate {
    pub fn new(gate: Gate, ledger: Ledger) -> Self {
        Self {
            gate,
            ledger,
            sku_numbers: Arc::default(),
            replica_wait: None,
            admission: AdmissionMode::Redis,
            redis_down: RedisDown::Reject,
            fallback_used: Arc::default(),
            flushed: Arc::default(),
        }
    }

    pub fn with_admission(mut self, admission: AdmissionMode, redis_down: RedisDown) -> Self {
        (self.admission, self.redis_down) = (admission, redis_down);
        self
    }

    pub fn admission(&self) -> AdmissionMode {
        self.admission
    }

    pub fn mark_fallback_used(&self) {
        self.fallback_used.store(true, Ordering::Relaxed);
    }

    /// True once after Postgres admitted in Redis's place.
    pub fn take_fallback_used(&self) -> bool {
        self.fallback_used.swap(false, Ordering::Relaxed)
    }

    /// The SKU owning a hold id: the gate says, or the ledger when Postgres
    /// decides (Postgres admission, or fallback while Redis is away).
    async fn sku_of(&self, hold_id: HoldId) -> Result<Option<SkuId>, AppError> {
        if self.admission == AdmissionMode::Postgres {
            return Ok(self.ledger.sku_by_no(hold_id.sku_no()).await?);
        }
        match self.gate.sku_of(hold_id).await {
            Ok(sku) => Ok(sku),
            Err(error) if self.falls_back(&error) => {
                Ok(self.ledger.sku_by_no(hold_id.sku_no()).await?)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// A hold transition done by Postgres alone; `Held` means extend.
    async fn direct(&self, hold_id: HoldId, to: HoldState) -> Result<HoldOutcome, AppError> {
        let transition = if to == HoldState::Held {
            self.ledger.extend_direct(hold_id).await?
        } else {
            self.ledger.settle_direct(hold_id, to).await?
        };
        Ok(match transition {
            DirectTransition::Done | DirectTransition::Same => self.ledger_hold(hold_id).await?,
            DirectTransition::Conflict(state) => HoldOutcome::Conflict(state),
            DirectTransition::ExtensionLimit => HoldOutcome::ExtensionLimit,
            DirectTransition::NoHold => HoldOutcome::NotFound,
        })
    }

    /// True when Postgres stands in for an unreachable gate.
    fn falls_back(&self, error: &GateError) -> bool {
        self.redis_down == RedisDown::Fallback && error.is_unavailable()
    }

    /// Makes admissions wait (Redis WAIT) for `replicas` replicas.
    pub fn with_replica_wait(mut self, replicas: u32, timeout_ms: u64) -> Self {
        self.replica_wait = (replicas > 0).then_some((replicas, timeout_ms));
        self
    }

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

    /// Admits a hold: one script in Redis, no Postgres. With
    /// `DROPGATE_ADMISSION=postgres`, or when Redis is unreachable and
    /// `DROPGATE_REDIS_DOWN=fallback`, one conditional UPDATE in Postgres.
    pub async fn admit(
        &self,
        sku: &SkuId,
        customer: &CustomerId,
        quantity: Quantity,
        key: &IdempotencyKey,
    ) -> Result<Admitted, AppError> {
        if self.admission == AdmissionMode::Postgres {
            return self.admit_direct(sku, customer, quantity, key).await;
        }
        match self.admit_gate(sku, customer, quantity, key).await {
            Err(AppError::Gate(error))
                if error.is_unavailable() && self.redis_down == RedisDown::Fallback =>
            {
                // Redis must be rebuilt from the ledger before it decides
                // again: it does not know these holds.
                self.mark_fallback_used();
                metrics::counter!(metric::FALLBACK_ADMISSIONS_TOTAL).increment(1);
                self.admit_direct(sku, customer, quantity, key).await
            }
            other => other,
        }
    }

    async fn admit_direct(
        &self,
        sku: &SkuId,
        customer: &CustomerId,
        quantity: Quantity,
        key: &IdempotencyKey,
    ) -> Result<Admitted, AppError> {
        let fingerprint = fingerprint(customer, quantity);
        let outcome = self
            .ledger
            .admit_direct(sku, customer, quantity, key, &fingerprint)
            .await?;
        Ok(admitted(sku, customer, quantity, outcome))
    }

    async fn admit_gate(
        &self,
        sku: &SkuId,
        customer: &CustomerId,
        quantity: Quantity,
        key: &IdempotencyKey,
    ) -> Result<Admitted, AppError> {
        let Some(sku_no) = self.sku_no(sku).await? else {
            return self.unknown_sku_admission().await;
        };
        let now = now_ms();
        let hold_id = HoldId::generate(sku_no, now);
        let fingerprint = fingerprint(customer, quantity);
        let outcome = self
            .gate
            .admit(
                sku,
                hold_id,
                Uuid::new_v4(),
                customer,
                quantity,
                key,
                &fingerprint,
                now,
            )
            .await?;
        if outcome == Admission::UnknownSku {
            return self.unknown_sku_admission().await;
        }
        if let (Admission::Held { .. }, Some((replicas, timeout_ms))) =
            (&outcome, self.replica_wait)
        {
            let acknowledged = self.gate.wait_for_replicas(replicas, timeout_ms).await?;
            if acknowledged < replicas {
                // The hold exists on the primary; answering 503 would only
                // make the client retry into a replay. Count it instead.
                metrics::counter!(metric::REDIS_WAIT_SHORT_TOTAL).increment(1);
                tracing::warn!(
                    acknowledged,
                    replicas,
                    "admission not yet on enough replicas"
                );
            }
        }
        Ok(admitted(sku, customer, quantity, outcome))
    }

    /// A SKU the gate does not have: unknown, or the gate lost its data.
    async fn unknown_sku_admission(&self) -> Result<Admitted, AppError> {
        self.require_gate().await?;
        Ok(Admitted {
            outcome: Admission::UnknownSku,
            hold: None,
        })
    }

    async fn require_gate(&self) -> Result<i64, AppError> {
        self.gate.epoch().await?.ok_or(AppError::GateNotBuilt)
    }

    pub async fn hold(&self, hold_id: HoldId) -> Result<HoldOutcome, AppError> {
        let Some(sku) = self.sku_of(hold_id).await? else {
            return Ok(HoldOutcome::NotFound);
        };
        let in_gate = if self.admission == AdmissionMode::Postgres {
            None
        } else {
            match self.gate.hold(&sku, hold_id).await {
                Ok(hold) => hold,
                Err(error) if self.falls_back(&error) => None,
                Err(error) => return Err(error.into()),
            }
        };
        match in_gate {
            Some(hold) => Ok(self.gate_view(hold_id, &sku, &hold).await),
            None => match self.ledger_hold(hold_id).await? {
                // Neither store knows more than that the hold existed.
                HoldOutcome::Conflict(HoldState::Lost) => Ok(HoldOutcome::Ok(Hold {
                    hold_id,
                    sku,
                    customer_id: String::new(),
                    quantity: 0,
                    state: HoldState::Lost,
                    expires_at: time_from_ms(hold_id.created_ms()),
                    extensions: 0,
                    durable: false,
                })),
                other => Ok(other),
            },
        }
    }

    /// A hold the gate no longer has (settled long ago): the ledger's view.
    /// A hold neither store has, issued before the gate was last rebuilt,
    /// was admitted by the lost gate and never reached the ledger: lost.
    async fn ledger_hold(&self, hold_id: HoldId) -> Result<HoldOutcome, AppError> {
        Ok(match self.ledger.hold(hold_id).await? {
            None if self.ledger.issued_by_a_lost_gate(hold_id).await? => {
                HoldOutcome::Conflict(HoldState::Lost)
            }
            Some(h) => HoldOutcome::Ok(Hold {
                hold_id,
                sku: h.sku,
                customer_id: h.customer_id,
                quantity: h.quantity,
                state: h.state,
                expires_at: h.expires_at,
                extensions: h.extensions,
                durable: true,
            }),
            None => HoldOutcome::NotFound,
        })
    }

    /// Confirms a hold; answers only once the ledger has the confirmation.
    pub async fn confirm(&self, hold_id: HoldId) -> Result<HoldOutcome, AppError> {
        let (sku, transition) = match self.transition(hold_id, HoldState::Confirmed).await? {
            Ok(decided) => decided,
            Err(outcome) => return Ok(outcome),
        };
        let (hold, up_to) = match transition {
            Transition::Done { hold, position } => (hold, Some(position)),
            Transition::Same { hold } => (hold, None),
            other => {
                return self
                    .refused(hold_id, &sku, other, HoldState::Confirmed)
                    .await
            }
        };
        self.flush(&sku, up_to).await?;
        match self.ledger.hold(hold_id).await? {
            Some(ledger) if ledger.state == HoldState::Confirmed => {
                Ok(HoldOutcome::Ok(api_hold(hold_id, &sku, &hold, true)))
            }
            Some(ledger) => Ok(HoldOutcome::Conflict(ledger.state)),
            None => Err(LedgerError::Invariant(format!(
                "confirmed hold {hold_id} not in the ledger"
            ))
            .into()),
        }
    }

    /// Releases a hold; its units are available again at once.
    pub async fn release(&self, hold_id: HoldId) -> Result<HoldOutcome, AppError> {
        let (sku, transition) = match self.transition(hold_id, HoldState::Released).await? {
            Ok(decided) => decided,
            Err(outcome) => return Ok(outcome),
        };
        match transition {
            Transition::Done { hold, position } => {
                let durable = self.flush_quietly(&sku, Some(position)).await;
                Ok(HoldOutcome::Ok(api_hold(hold_id, &sku, &hold, durable)))
            }
            Transition::Same { hold } => Ok(self.gate_view(hold_id, &sku, &hold).await),
            other => {
                self.refused(hold_id, &sku, other, HoldState::Released)
                    .await
            }
        }
    }

    /// Moves a held hold's expiry to now + the SKU's hold TTL.
    pub async fn extend(&self, hold_id: HoldId) -> Result<HoldOutcome, AppError> {
        let (sku, transition) = match self.transition(hold_id, HoldState::Held).await? {
            Ok(decided) => decided,
            Err(outcome) => return Ok(outcome),
        };
        match transition {
            Transition::Done { hold, .. } | Transition::Same { hold } => {
                Ok(self.gate_view(hold_id, &sku, &hold).await)
            }
            other => self.refused(hold_id, &sku, other, HoldState::Held).await,
        }
    }

    /// Runs a hold transition towards `to` (`Held` means extend) in the
    /// gate: `Ok` with what the gate decided, or `Err` with the final answer
    /// when there is no such hold or Postgres decided in the gate's place.
    async fn transition(
        &self,
        hold_id: HoldId,
        to: HoldState,
    ) -> Result<Result<(SkuId, Transition), HoldOutcome>, AppError> {
        if self.admission == AdmissionMode::Postgres {
            return Ok(Err(self.direct(hold_id, to).await?));
        }
        let Some(sku) = self.sku_of(hold_id).await? else {
            return Ok(Err(HoldOutcome::NotFound));
        };
        let decided = match to {
            HoldState::Confirmed => self.gate.confirm(&sku, hold_id).await,
            HoldState::Released => self.gate.release(&sku, hold_id).await,
            _ => self.gate.extend(&sku, hold_id).await,
        };
        match decided {
            Ok(transition) => Ok(Ok((sku, transition))),
            Err(error) if self.falls_back(&error) => Ok(Err(self.direct(hold_id, to).await?)),
            Err(error) => Err(error.into()),
        }
    }

    /// The answer when the gate did not make the transition.
    async fn refused(
        &self,
        hold_id: HoldId,
        sku: &SkuId,
        transition: Transition,
        wanted: HoldState,
    ) -> Result<HoldOutcome, AppError> {
        Ok(match transition {
            Transition::Conflict { hold, position } => {
                // It may have just expired: get that event to the ledger.
                self.flush_quietly(sku, position).await;
                HoldOutcome::Conflict(hold.state)
            }
            Transition::ExtensionLimit { .. } => HoldOutcome::ExtensionLimit,
            Transition::NoHold => return self.settled_elsewhere(hold_id, wanted).await,
            Transition::Done { hold, .. } | Transition::Same { hold } => {
                self.gate_view(hold_id, sku, &hold).await
            }
        })
    }

    /// A hold as the gate has it, `durable` if the ledger has it too (the
    /// ledger being away only means "not known to be durable").
    async fn gate_view(&self, hold_id: HoldId, sku: &SkuId, hold: &GateHold) -> HoldOutcome {
        let durable = matches!(self.ledger.hold(hold_id).await, Ok(Some(_)));
        HoldOutcome::Ok(api_hold(hold_id, sku, hold, durable))
    }

    /// A transition asked of a hold the gate no longer keeps: answer from the
    /// ledger (idempotent success when it is already in `wanted`).
    async fn settled_elsewhere(
        &self,
        hold_id: HoldId,
        wanted: HoldState,
    ) -> Result<HoldOutcome, AppError> {
        Ok(match self.ledger_hold(hold_id).await? {
            HoldOutcome::Ok(hold) if hold.state == wanted => HoldOutcome::Ok(hold),
            HoldOutcome::Ok(hold) => HoldOutcome::Conflict(hold.state),
            other => other,
        })
    }

    /// Writes a SKU's events to the ledger up to `up_to` (or all of them),
    /// the same way the worker does. Safe beside a running worker.
    ///
    /// Flushes of one SKU queue on a per-SKU lock, and each writes all the
    /// stream has, not just up to its own `up_to`: a burst of confirms costs
    /// a few ledger transactions, and whoever waited finds its event written.
    pub async fn flush(&self, sku: &SkuId, up_to: Option<Position>) -> Result<(), AppError> {
        let slot = self.flush_slot(sku);
        let mut known = slot.lock().await;
        if up_to.is_some_and(|up_to| known.is_some_and(|known| known >= up_to)) {
            return Ok(());
        }
        loop {
            let Some(ledger_sku) = self.ledger.sku(sku).await? else {
                return Ok(());
            };
            *known = Some(ledger_sku.applied);
            if up_to.is_some_and(|up_to| ledger_sku.applied >= up_to) {
                return Ok(());
            }
            let events = self
                .gate
                .events(sku, ledger_sku.applied, None, FLUSH_BATCH_EVENTS)
                .await?;
            let Some(last) = events.last().map(|e| e.position) else {
                return Ok(());
            };
            let complete = events.len() < FLUSH_BATCH_EVENTS;
            let report = self
                .ledger
                .apply(&BTreeMap::from([(sku.clone(), events)]))
                .await?;
            self.applied(&report).await?;
            *known = Some(last);
            if up_to.is_none_or(|up_to| last >= up_to) && complete {
                return Ok(());
            }
        }
    }

    fn flush_slot(&self, sku: &SkuId) -> Arc<tokio::sync::Mutex<Option<Position>>> {
        match self.flushed.lock() {
            Ok(mut slots) => slots.entry(sku.clone()).or_default().clone(),
            // A poisoned map only loses the coalescing, never correctness.
            Err(_) => Arc::default(),
        }
    }

    /// Follows up a ledger apply: counts it, and tells the gate about every
    /// admission the ledger refused, so its units leave `held` there too.
    pub async fn applied(&self, report: &ApplyReport) -> Result<(), AppError> {
        crate::worker::record_apply(report);
        for lost in &report.lost {
            let was = self.gate.lose(&lost.sku, lost.hold_id).await?;
            tracing::error!(sku = %lost.sku, hold_id = %lost.hold_id, quantity = lost.quantity, was = %was,
                "the ledger refused an admission: hold is lost");
        }
        Ok(())
    }

    /// `flush` for callers whose answer does not depend on it; true if done.
    async fn flush_quietly(&self, sku: &SkuId, up_to: Option<Position>) -> bool {
        if up_to.is_none() {
            return false;
        }
        match self.flush(sku, up_to).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%sku, %error, "ledger write deferred to the worker");
                false
            }
        }
    }

    pub async fn sku(&self, sku: &SkuId) -> Result<Option<Sku>, AppError> {
        if self.admission == AdmissionMode::Postgres {
            return Ok(self.ledger.sku(sku).await?.map(|row| ledger_sku(&row)));
        }
        match self.gate.sku(sku).await? {
            Some(figures) => Ok(Some(api_sku(sku, &figures))),
            None => {
                self.require_gate().await?;
                Ok(None)
            }
        }
    }

    pub async fn skus(&self, after: Option<&SkuId>, limit: i64) -> Result<Vec<Sku>, AppError> {
        let mut skus = Vec::new();
        if self.admission == AdmissionMode::Postgres {
            return Ok(self
                .ledger
                .skus(after, limit)
                .await?
                .iter()
                .map(ledger_sku)
                .collect());
        }
        for row in self.ledger.skus(after, limit).await? {
            if let Some(figures) = self.gate.sku(&row.sku).await? {
                skus.push(api_sku(&row.sku, &figures));
            }
        }
        Ok(skus)
    }

    /// Creates a SKU or replaces its settings and stock (`PUT`).
    pub async fn put_sku(
        &self,
        sku: &SkuId,
        settings: SkuSettings,
    ) -> Result<SkuOutcome, AppError> {
        let epoch = self.require_gate().await?;
        let sku_no = self.ledger.ensure_sku(sku, &settings).await?;
        self.gate.register_sku(sku_no, sku).await?;
        let reason = format!("on_hand set to {} by PUT", settings.on_hand);
        let change = self
            .gate
            .change_stock(sku, StockChange::Put { settings, sku_no }, &reason, epoch)
            .await?;
        self.finish_stock_change(sku, change).await
    }

    /// Adds `delta` (possibly negative) to a SKU's on_hand.
    pub async fn adjust_sku(
        &self,
        sku: &SkuId,
        delta: i64,
        reason: &str,
    ) -> Result<SkuOutcome, AppError> {
        let epoch = self.require_gate().await?;
        let change = self
            .gate
            .change_stock(sku, StockChange::Adjust { delta }, reason, epoch)
            .await?;
        self.finish_stock_change(sku, change).await
    }

    async fn finish_stock_change(
        &self,
        sku: &SkuId,
        change: SkuChange,
    ) -> Result<SkuOutcome, AppError> {
        Ok(match change {
            SkuChange::Created(figures) => {
                self.flush(sku, None).await?;
                SkuOutcome::Created(api_sku(sku, &figures))
            }
            SkuChange::Updated(figures) => {
                self.flush(sku, None).await?;
                SkuOutcome::Updated(api_sku(sku, &figures))
            }
            SkuChange::Conflict {
                requested,
                held,
                sold,
            } => SkuOutcome::Conflict {
                requested,
                held,
                sold,
            },
            SkuChange::UnknownSku => SkuOutcome::NotFound,
        })
    }
}

/// Same customer and quantity, same fingerprint: what makes a replay.
fn fingerprint(customer: &CustomerId, quantity: Quantity) -> String {
    let digest = sha1_smol::Sha1::from(format!("{}\n{}", customer.as_str(), quantity.get()))
        .digest()
        .to_string();
    digest[..16].to_owned()
}

fn api_hold(hold_id: HoldId, sku: &SkuId, hold: &GateHold, durable: bool) -> Hold {
    Hold {
        hold_id,
        sku: sku.clone(),
        customer_id: hold.customer_id.clone(),
        quantity: hold.quantity,
        state: hold.state,
        expires_at: time_from_ms(hold.expires_at_ms),
        extensions: hold.extensions,
        durable,
    }
}

fn api_sku(sku: &SkuId, figures: &GateSku) -> Sku {
    Sku {
        sku: sku.clone(),
        on_hand: figures.on_hand,
        available: figures.on_hand - figures.held - figures.sold,
        held: figures.held,
        sold: figures.sold,
        per_customer_limit: figures.per_customer_limit,
        hold_ttl_ms: figures.hold_ttl_ms,
        max_extensions: figures.max_extensions,
    }
}

/// The API's view of an admission outcome.
fn admitted(
    sku: &SkuId,
    customer: &CustomerId,
    quantity: Quantity,
    outcome: Admission,
) -> Admitted {
    let held = match &outcome {
        Admission::Held {
            hold_id,
            expires_at_ms,
        } => Some((*hold_id, *expires_at_ms)),
        Admission::Replayed(first) => match first.as_ref() {
            Admission::Held {
                hold_id,
                expires_at_ms,
            } => Some((*hold_id, *expires_at_ms)),
            _ => None,
        },
        _ => None,
    };
    let hold = held.map(|(hold_id, expires_at_ms)| Hold {
        hold_id,
        sku: sku.clone(),
        customer_id: customer.as_str().to_owned(),
        quantity: i64::from(quantity.get()),
        state: HoldState::Held,
        expires_at: time_from_ms(expires_at_ms),
        extensions: 0,
        durable: false,
    });
    Admitted { outcome, hold }
}

fn ledger_sku(row: &crate::ledger::LedgerSku) -> Sku {
    Sku {
        sku: row.sku.clone(),
        on_hand: row.on_hand,
        available: row.on_hand - row.held - row.sold,
        held: row.held,
        sold: row.sold,
        per_customer_limit: row.per_customer_limit,
        hold_ttl_ms: row.hold_ttl_ms,
        max_extensions: row.max_extensions,
    }
}
