//! Applying gate events to the ledger: one transaction per batch, a handful
//! of bulk statements whatever the batch size.
//!
//! Each SKU's row is locked (`FOR UPDATE`, in id order, so concurrent
//! appliers never deadlock) and its applied stream position read. Events at
//! or before that position are replays and are skipped, so counters only
//! follow events applied for the first time; events of an older gate epoch
//! are fenced off. The rest are applied in stream order in memory, then
//! written with UNNEST: movements, new holds, changed holds, SKU counters.

use super::{HoldRow, Ledger, LedgerError, LedgerHold, LedgerSku};
use crate::domain::{
    Change, Event, HoldId, HoldState, MovementKind, Position, SkuId, ms_from_time, time_from_ms,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use time::OffsetDateTime;
use uuid::Uuid;

/// What one apply did, in numbers tests and metrics can use.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// Events recorded as movements now.
    pub applied: u64,
    /// Events the ledger already had (duplicate delivery, replays).
    pub skipped: u64,
    /// Admissions the ledger refused; the gate must be told.
    pub lost: Vec<LostHold>,
}

impl ApplyReport {
    /// Adds another apply's figures to these.
    pub fn merge(&mut self, other: ApplyReport) {
        self.applied += other.applied;
        self.skipped += other.skipped;
        self.lost.extend(other.lost);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostHold {
    pub sku: SkuId,
    pub hold_id: HoldId,
    pub quantity: i64,
}

/// One SKU row as the batch changes it.
struct SkuState {
    on_hand: i64,
    held: i64,
    sold: i64,
    per_customer_limit: i64,
    hold_ttl_ms: i64,
    max_extensions: i64,
    applied: Position,
}

/// A hold as the batch changes it.
struct HoldPlan {
    sku: String,
    state: HoldState,
    quantity: i64,
    extensions: i64,
    expires_at_ms: i64,
    /// Set when the hold is new to the ledger in this batch.
    created: Option<NewHold>,
}

/// A `holds` row with its id, as the batch reads it.
#[derive(sqlx::FromRow)]
struct PlannedHoldRow {
    hold_id: Uuid,
    #[sqlx(flatten)]
    hold: HoldRow,
}

struct NewHold {
    customer_id: String,
    idempotency_key: String,
    fingerprint: String,
    created_at_ms: i64,
}

/// Column vectors of the movements insert.
#[derive(Default)]
struct Movements {
    event_id: Vec<Uuid>,
    sku: Vec<String>,
    hold_id: Vec<Option<Uuid>>,
    kind: Vec<&'static str>,
    quantity_delta: Vec<i64>,
    held_delta: Vec<i64>,
    sold_delta: Vec<i64>,
    reason: Vec<Option<String>>,
    epoch: Vec<i64>,
    seq: Vec<i64>,
    occurred_at: Vec<OffsetDateTime>,
}

struct Movement {
    kind: MovementKind,
    quantity_delta: i64,
    held_delta: i64,
    sold_delta: i64,
    reason: Option<String>,
}

impl Movement {
    fn new(kind: MovementKind) -> Self {
        Self {
            kind,
            quantity_delta: 0,
            held_delta: 0,
            sold_delta: 0,
            reason: None,
        }
    }

    fn because(mut self, reason: String) -> Self {
        self.reason = Some(reason);
        self
    }
}

impl Movements {
    fn push(&mut self, sku: &str, event: &Event, movement: Movement) {
        self.event_id.push(event.event_id);
        self.sku.push(sku.to_owned());
        self.hold_id.push(event.change.hold_id().map(HoldId::uuid));
        self.kind.push(movement.kind.as_str());
        self.quantity_delta.push(movement.quantity_delta);
        self.held_delta.push(movement.held_delta);
        self.sold_delta.push(movement.sold_delta);
        self.reason.push(movement.reason);
        self.epoch.push(event.position.epoch);
        self.seq.push(event.position.seq);
        self.occurred_at.push(time_from_ms(event.occurred_at_ms));
    }
}

impl Change {
    pub fn hold_id(&self) -> Option<HoldId> {
        match self {
            Change::Admit { hold_id, .. }
            | Change::Settle { hold_id, .. }
            | Change::Extend { hold_id, .. } => Some(*hold_id),
            Change::Adjust { .. } => None,
        }
    }
}

fn settle_kind(to: HoldState) -> MovementKind {
    MovementKind::settling(to).unwrap_or(MovementKind::Expire)
}

impl Ledger {
    /// Applies events, grouped by SKU and in stream order within each, in one
    /// transaction. Safe to call again with the same events.
    pub async fn apply(
        &self,
        batch: &BTreeMap<SkuId, Vec<Event>>,
    ) -> Result<ApplyReport, LedgerError> {
        self.apply_fenced(batch, true).await
    }

    /// Applies events whatever their stream position, leaving every SKU's
    /// applied position where it is: for a dead letter an operator retries
    /// after the events that followed it were applied. Event ids still make
    /// it exactly once.
    pub(super) async fn apply_out_of_order(
        &self,
        batch: &BTreeMap<SkuId, Vec<Event>>,
    ) -> Result<ApplyReport, LedgerError> {
        self.apply_fenced(batch, false).await
    }

    async fn apply_fenced(
        &self,
        batch: &BTreeMap<SkuId, Vec<Event>>,
        by_position: bool,
    ) -> Result<ApplyReport, LedgerError> {
        let mut report = ApplyReport::default();
        if batch.values().all(Vec::is_empty) {
            return Ok(report);
        }
        let mut tx = self.pool.begin().await?;

        let names: Vec<&str> = batch.keys().map(SkuId::as_str).collect();
        let rows = sqlx::query_as::<_, super::SkuRow>(concat!(
            "SELECT ",
            super::sku_columns!(),
            " FROM skus WHERE sku = ANY($1) ORDER BY sku FOR UPDATE"
        ))
        .bind(&names)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(LedgerSku::try_from)
        .collect::<Result<Vec<_>, _>>()?;

        let hold_ids: Vec<Uuid> = batch
            .values()
            .flatten()
            .filter_map(|e| e.change.hold_id())
            .map(HoldId::uuid)
            .collect();
        let mut holds: HashMap<Uuid, HoldPlan> = HashMap::new();
        for row in sqlx::query_as::<_, PlannedHoldRow>(
            "SELECT hold_id, sku, customer_id, quantity, state, extensions, expires_at
             FROM holds WHERE hold_id = ANY($1)",
        )
        .bind(&hold_ids)
        .fetch_all(&mut *tx)
        .await?
        {
            let hold = LedgerHold::try_from(row.hold)?;
            holds.insert(
                row.hold_id,
                HoldPlan {
                    sku: hold.sku.as_str().to_owned(),
                    state: hold.state,
                    quantity: hold.quantity,
                    extensions: hold.extensions,
                    expires_at_ms: ms_from_time(hold.expires_at),
                    created: None,
                },
            );
        }
        let existing: Vec<Uuid> = holds.keys().copied().collect();
        // Event ids the ledger already has. Positions make replays visible;
        // this catches the same event at a second position (a duplicate
        // append), which must not count twice either.
        let event_ids: Vec<Uuid> = batch.values().flatten().map(|e| e.event_id).collect();
        let recorded: HashSet<Uuid> =
            sqlx::query_scalar("SELECT event_id FROM movements WHERE event_id = ANY($1)")
                .bind(&event_ids)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect();
        let mut seen: HashSet<Uuid> = HashSet::new();

        let mut movements = Movements::default();
        let mut skus: Vec<(String, SkuState)> = Vec::with_capacity(rows.len());
        for row in &rows {
            let id = row.sku.clone();
            let name = id.as_str().to_owned();
            let figures = &row.figures;
            let mut sku = SkuState {
                on_hand: figures.stock.on_hand,
                held: figures.stock.held,
                sold: figures.stock.sold,
                per_customer_limit: figures.per_customer_limit,
                hold_ttl_ms: figures.hold_ttl_ms,
                max_extensions: figures.max_extensions,
                applied: row.applied,
            };
            let mut events: Vec<&Event> = batch
                .get(&id)
                .map(|v| v.iter().collect())
                .unwrap_or_default();
            // Stable: the events of one entry (a batch of admissions) keep
            // their order.
            events.sort_by_key(|e| e.position);
            // Entries are applied whole, so an entry at or before the
            // position the ledger had is a replay, every event of it.
            let applied_before = sku.applied;
            for event in events {
                // Older epochs are fenced off: those events were written by a
                // gate since rebuilt from this ledger, which never had them.
                if by_position {
                    if event.position <= applied_before {
                        report.skipped += 1;
                        continue;
                    }
                    sku.applied = event.position;
                }
                if recorded.contains(&event.event_id) || !seen.insert(event.event_id) {
                    tracing::warn!(sku = %id, event_id = %event.event_id, "duplicate event skipped");
                    report.skipped += 1;
                    continue;
                }
                let movement = apply_one(&id, &mut sku, event, &mut holds, &mut report);
                movements.push(&name, event, movement);
                report.applied += 1;
            }
            skus.push((name, sku));
        }
        // Events of SKUs the ledger does not know cannot be applied; they
        // stay pending until the SKU row exists.
        let known: usize = skus.len();
        if known < batch.len() {
            return Err(LedgerError::Invariant(format!(
                "{} SKU(s) in the batch are not in the ledger",
                batch.len() - known
            )));
        }

        let inserted = sqlx::query(
            "INSERT INTO movements (event_id, sku, hold_id, kind, quantity_delta, held_delta,
                                    sold_delta, reason, epoch, seq, occurred_at)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::int8[],
                                  $6::int8[], $7::int8[], $8::text[], $9::int8[], $10::int8[],
                                  $11::timestamptz[])
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(&movements.event_id)
        .bind(&movements.sku)
        .bind(&movements.hold_id)
        .bind(&movements.kind)
        .bind(&movements.quantity_delta)
        .bind(&movements.held_delta)
        .bind(&movements.sold_delta)
        .bind(&movements.reason)
        .bind(&movements.epoch)
        .bind(&movements.seq)
        .bind(&movements.occurred_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted != movements.event_id.len() as u64 {
            // Positions say these events are new, event ids say otherwise:
            // counters would drift, so refuse the whole batch.
            return Err(LedgerError::Invariant(format!(
                "{} of {} new events already had movements",
                movements.event_id.len() as u64 - inserted,
                movements.event_id.len()
            )));
        }

        write_holds(&mut tx, &holds, &existing).await?;

        write_skus(&mut tx, skus).await?;

        tx.commit().await?;
        Ok(report)
    }
}

/// Applies one event to the in-memory SKU and holds; returns its movement.
fn apply_one(
    sku_id: &SkuId,
    sku: &mut SkuState,
    event: &Event,
    holds: &mut HashMap<Uuid, HoldPlan>,
    report: &mut ApplyReport,
) -> Movement {
    match &event.change {
        Change::Admit {
            hold_id,
            customer_id,
            quantity,
            expires_at_ms,
            idempotency_key,
            fingerprint,
        } => {
            if holds.contains_key(&hold_id.uuid()) {
                return Movement::new(MovementKind::Admit)
                    .because("duplicate admit of a known hold".into());
            }
            let available = sku.on_hand - sku.held - sku.sold;
            let refused = available < *quantity;
            holds.insert(
                hold_id.uuid(),
                HoldPlan {
                    sku: sku_id.as_str().to_owned(),
                    state: if refused {
                        HoldState::Lost
                    } else {
                        HoldState::Held
                    },
                    quantity: *quantity,
                    extensions: 0,
                    expires_at_ms: *expires_at_ms,
                    created: Some(NewHold {
                        customer_id: customer_id.clone(),
                        idempotency_key: idempotency_key.clone(),
                        fingerprint: fingerprint.clone(),
                        created_at_ms: event.occurred_at_ms,
                    }),
                },
            );
            if refused {
                report.lost.push(LostHold {
                    sku: sku_id.clone(),
                    hold_id: *hold_id,
                    quantity: *quantity,
                });
                return Movement::new(MovementKind::Lost).because(format!(
                    "ledger refused admit of {quantity}: {available} available"
                ));
            }
            sku.held += quantity;
            Movement {
                held_delta: *quantity,
                ..Movement::new(MovementKind::Admit)
            }
        }
        Change::Settle { hold_id, to, .. } => {
            let kind = settle_kind(*to);
            let Some(hold) = holds.get_mut(&hold_id.uuid()) else {
                return Movement::new(kind)
                    .because("hold unknown to the ledger; nothing moved".into());
            };
            if hold.state != HoldState::Held {
                return Movement::new(kind)
                    .because(format!("hold was {}; nothing moved", hold.state.as_str()));
            }
            hold.state = *to;
            sku.held -= hold.quantity;
            let mut movement = Movement {
                held_delta: -hold.quantity,
                ..Movement::new(kind)
            };
            if *to == HoldState::Confirmed {
                sku.sold += hold.quantity;
                movement.sold_delta = hold.quantity;
            }
            movement
        }
        Change::Extend {
            hold_id,
            expires_at_ms,
        } => match holds.get_mut(&hold_id.uuid()) {
            Some(hold) if hold.state == HoldState::Held => {
                hold.expires_at_ms = *expires_at_ms;
                hold.extensions += 1;
                Movement::new(MovementKind::Extend)
            }
            _ => Movement::new(MovementKind::Extend)
                .because("hold not held in the ledger; nothing moved".into()),
        },
        Change::Adjust {
            on_hand_delta,
            per_customer_limit,
            hold_ttl_ms,
            max_extensions,
            reason,
        } => {
            sku.per_customer_limit = *per_customer_limit;
            sku.hold_ttl_ms = *hold_ttl_ms;
            sku.max_extensions = *max_extensions;
            let on_hand = sku.on_hand + on_hand_delta;
            if on_hand < sku.held + sku.sold {
                return Movement::new(MovementKind::Adjustment).because(format!(
                    "refused by the ledger ({on_hand} on hand < {} held + sold): {reason}",
                    sku.held + sku.sold
                ));
            }
            sku.on_hand = on_hand;
            Movement {
                quantity_delta: *on_hand_delta,
                ..Movement::new(MovementKind::Adjustment)
            }
            .because(reason.clone())
        }
    }
}

/// Column vectors of the SKU counters update.
#[derive(Default)]
struct SkuColumns {
    sku: Vec<String>,
    on_hand: Vec<i64>,
    held: Vec<i64>,
    sold: Vec<i64>,
    per_customer_limit: Vec<i32>,
    hold_ttl_ms: Vec<i64>,
    max_extensions: Vec<i32>,
    epoch: Vec<i64>,
    seq: Vec<i64>,
}

async fn write_skus(
    tx: &mut sqlx::PgConnection,
    skus: Vec<(String, SkuState)>,
) -> Result<(), LedgerError> {
    let mut cols = SkuColumns::default();
    for (name, s) in skus {
        cols.sku.push(name);
        cols.on_hand.push(s.on_hand);
        cols.held.push(s.held);
        cols.sold.push(s.sold);
        cols.per_customer_limit
            .push(i32::try_from(s.per_customer_limit).unwrap_or(i32::MAX));
        cols.hold_ttl_ms.push(s.hold_ttl_ms);
        cols.max_extensions
            .push(i32::try_from(s.max_extensions).unwrap_or(0));
        cols.epoch.push(s.applied.epoch);
        cols.seq.push(s.applied.seq);
    }
    sqlx::query(
        "UPDATE skus s SET on_hand = u.on_hand, held = u.held, sold = u.sold,
                per_customer_limit = u.per_customer_limit, hold_ttl_ms = u.hold_ttl_ms,
                max_extensions = u.max_extensions, epoch = u.epoch, applied_seq = u.seq,
                updated_at = now()
         FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int4[], $6::int8[],
                     $7::int4[], $8::int8[], $9::int8[])
              AS u(sku, on_hand, held, sold, per_customer_limit, hold_ttl_ms, max_extensions, epoch, seq)
         WHERE s.sku = u.sku",
    )
    .bind(&cols.sku)
    .bind(&cols.on_hand)
    .bind(&cols.held)
    .bind(&cols.sold)
    .bind(&cols.per_customer_limit)
    .bind(&cols.hold_ttl_ms)
    .bind(&cols.max_extensions)
    .bind(&cols.epoch)
    .bind(&cols.seq)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn write_holds(
    tx: &mut sqlx::PgConnection,
    holds: &HashMap<Uuid, HoldPlan>,
    existing: &[Uuid],
) -> Result<(), LedgerError> {
    let mut new = (
        Vec::<Uuid>::new(),
        Vec::<String>::new(),
        Vec::<String>::new(),
        Vec::<i32>::new(),
        Vec::<&str>::new(),
        Vec::<i32>::new(),
        Vec::<String>::new(),
        Vec::<String>::new(),
        Vec::<OffsetDateTime>::new(),
        Vec::<OffsetDateTime>::new(),
    );
    let mut changed = (
        Vec::<Uuid>::new(),
        Vec::<&str>::new(),
        Vec::<i32>::new(),
        Vec::<OffsetDateTime>::new(),
    );
    for (id, hold) in holds {
        let quantity = i32::try_from(hold.quantity).unwrap_or(i32::MAX);
        let extensions = i32::try_from(hold.extensions).unwrap_or(i32::MAX);
        if let Some(created) = &hold.created {
            new.0.push(*id);
            new.1.push(hold.sku.clone());
            new.2.push(created.customer_id.clone());
            new.3.push(quantity);
            new.4.push(hold.state.as_str());
            new.5.push(extensions);
            new.6.push(created.idempotency_key.clone());
            new.7.push(created.fingerprint.clone());
            new.8.push(time_from_ms(created.created_at_ms));
            new.9.push(time_from_ms(hold.expires_at_ms));
        } else if existing.contains(id) {
            changed.0.push(*id);
            changed.1.push(hold.state.as_str());
            changed.2.push(extensions);
            changed.3.push(time_from_ms(hold.expires_at_ms));
        }
    }
    if !new.0.is_empty() {
        sqlx::query(
            "INSERT INTO holds (hold_id, sku, customer_id, quantity, state, extensions,
                               idempotency_key, request_fingerprint, created_at, expires_at)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int4[], $5::text[],
                                  $6::int4[], $7::text[], $8::text[], $9::timestamptz[],
                                  $10::timestamptz[])",
        )
        .bind(&new.0)
        .bind(&new.1)
        .bind(&new.2)
        .bind(&new.3)
        .bind(&new.4)
        .bind(&new.5)
        .bind(&new.6)
        .bind(&new.7)
        .bind(&new.8)
        .bind(&new.9)
        .execute(&mut *tx)
        .await?;
    }
    if !changed.0.is_empty() {
        sqlx::query(
            "UPDATE holds h SET state = u.state, extensions = u.extensions,
                    expires_at = u.expires_at, updated_at = now()
             FROM UNNEST($1::uuid[], $2::text[], $3::int4[], $4::timestamptz[])
                  AS u(hold_id, state, extensions, expires_at)
             WHERE h.hold_id = u.hold_id
               AND (h.state, h.extensions, h.expires_at) IS DISTINCT FROM (u.state, u.extensions, u.expires_at)",
        )
        .bind(&changed.0)
        .bind(&changed.1)
        .bind(&changed.2)
        .bind(&changed.3)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}
