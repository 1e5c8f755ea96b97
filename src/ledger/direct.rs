//! Postgres-direct admission: the pattern most shops use today, kept as the
//! benchmark peer of the gate (`DROPGATE_ADMISSION=postgres`).
//!
//! Admission is one conditional UPDATE (`held = held + q WHERE on_hand -
//! held - sold >= q`), which also locks the SKU row so every other check in
//! the transaction (idempotency key, per-customer limit) is serialized, plus
//! the hold row and its movement, in one transaction. Correct, and as fast
//! as one hot row allows.

use super::{Ledger, LedgerError};
use crate::domain::{
    Admission, CustomerId, HoldId, HoldIdKey, HoldState, IdempotencyKey, MovementKind, Quantity,
    SkuId, ms_from_time,
};
use time::OffsetDateTime;
use uuid::Uuid;

/// Holds expired per statement by the Postgres-direct reaper.
const EXPIRE_BATCH: i64 = 500;

/// What a direct state change found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectTransition {
    Done,
    Same,
    Conflict(HoldState),
    ExtensionLimit,
    NoHold,
}

/// One Postgres-direct admission, as the service layer asks for it.
pub struct DirectAdmission<'a> {
    pub sku: &'a SkuId,
    pub customer: &'a CustomerId,
    pub quantity: Quantity,
    pub key: &'a IdempotencyKey,
    pub fingerprint: &'a str,
    /// The hold id's serial (unique; see [`HoldId`]) and the key that
    /// signs it: the SKU's number is only known under its row lock.
    /// Postgres's clock decides everything time-based.
    pub serial: u64,
    pub id_key: &'a HoldIdKey,
}

impl Ledger {
    pub async fn admit_direct(
        &self,
        request: DirectAdmission<'_>,
    ) -> Result<Admission, LedgerError> {
        let DirectAdmission {
            sku,
            customer,
            quantity,
            key,
            fingerprint,
            serial,
            id_key,
        } = request;
        let q = i64::from(quantity.get());
        let mut tx = self.pool.begin().await?;
        // (sku_no, per_customer_limit, hold_ttl_ms) when the units were free.
        let taken: Option<(i32, i32, i64)> = sqlx::query_as(
            "UPDATE skus SET held = held + $2, updated_at = now()
             WHERE sku = $1 AND on_hand - held - sold >= $2
             RETURNING sku_no, per_customer_limit, hold_ttl_ms",
        )
        .bind(sku.as_str())
        .bind(q)
        .fetch_optional(&mut *tx)
        .await?;
        if taken.is_none() {
            // Unknown, sold out, or a replay of an earlier admission.
            let exists: Option<i64> =
                sqlx::query_scalar("SELECT held FROM skus WHERE sku = $1 FOR UPDATE")
                    .bind(sku.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(held) = exists else {
                return Ok(Admission::UnknownSku);
            };
            if let Some(replay) = replay(&mut tx, sku, key, fingerprint).await? {
                return Ok(replay);
            }
            let retry_after_ms = if held > 0 {
                let next_ms: Option<i64> = sqlx::query_scalar(
                    "SELECT (extract(epoch FROM min(expires_at) - now()) * 1000)::int8
                     FROM holds WHERE sku = $1 AND state = 'held'",
                )
                .bind(sku.as_str())
                .fetch_one(&mut *tx)
                .await?;
                Some(next_ms.map_or(1000, |ms| ms.max(1000)))
            } else {
                None
            };
            return Ok(Admission::SoldOut { retry_after_ms });
        }
        let (sku_no, limit, hold_ttl_ms) =
            taken.ok_or_else(|| LedgerError::Invariant("no row".into()))?;
        if let Some(replay) = replay(&mut tx, sku, key, fingerprint).await? {
            tx.rollback().await?;
            return Ok(replay);
        }
        let limit = i64::from(limit);
        if limit > 0 {
            let already: i64 = sqlx::query_scalar(
                "SELECT coalesce(sum(quantity), 0)::int8 FROM holds
                 WHERE sku = $1 AND customer_id = $2 AND state IN ('held', 'confirmed')",
            )
            .bind(sku.as_str())
            .bind(customer.as_str())
            .fetch_one(&mut *tx)
            .await?;
            if already + q > limit {
                tx.rollback().await?;
                return Ok(Admission::LimitExceeded { limit, already });
            }
        }
        let sku_no = u32::try_from(sku_no).unwrap_or(0);
        let hold_id = HoldId::issue(id_key, serial, sku_no, quantity);
        let expires_at: OffsetDateTime = sqlx::query_scalar(
            "WITH h AS (
                INSERT INTO holds (hold_id, sku, customer_id, quantity, state, idempotency_key,
                                   request_fingerprint, created_at, expires_at)
                VALUES ($1, $2, $3, $4, 'held', $5, $6, now(),
                        now() + make_interval(secs => $7::float8 / 1000))
                RETURNING expires_at),
             m AS (
                INSERT INTO movements (event_id, sku, hold_id, kind, held_delta, reason, occurred_at)
                VALUES ($8, $2, $1, 'admit', $4, 'postgres-direct', now()))
             SELECT expires_at FROM h",
        )
        .bind(hold_id.uuid())
        .bind(sku.as_str())
        .bind(customer.as_str())
        .bind(i32::try_from(q).unwrap_or(i32::MAX))
        .bind(key.as_str())
        .bind(fingerprint)
        .bind(hold_ttl_ms)
        .bind(Uuid::new_v4())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Admission::Held {
            hold_id,
            expires_at_ms: ms_from_time(expires_at),
        })
    }

    /// Confirms, releases or (when past due) expires a hold in Postgres.
    pub async fn settle_direct(
        &self,
        hold_id: HoldId,
        to: HoldState,
    ) -> Result<DirectTransition, LedgerError> {
        let mut tx = self.pool.begin().await?;
        let Some((sku, state, quantity, expired)) = lock_hold(&mut tx, hold_id).await? else {
            return Ok(DirectTransition::NoHold);
        };
        if state == to {
            return Ok(DirectTransition::Same);
        }
        if state != HoldState::Held {
            return Ok(DirectTransition::Conflict(state));
        }
        let to = if expired { HoldState::Expired } else { to };
        settle(&mut tx, hold_id, &sku, quantity, to, "postgres-direct").await?;
        tx.commit().await?;
        Ok(if expired {
            DirectTransition::Conflict(HoldState::Expired)
        } else {
            DirectTransition::Done
        })
    }

    pub async fn extend_direct(&self, hold_id: HoldId) -> Result<DirectTransition, LedgerError> {
        let mut tx = self.pool.begin().await?;
        let Some((sku, state, quantity, expired)) = lock_hold(&mut tx, hold_id).await? else {
            return Ok(DirectTransition::NoHold);
        };
        if state != HoldState::Held {
            return Ok(DirectTransition::Conflict(state));
        }
        if expired {
            settle(
                &mut tx,
                hold_id,
                &sku,
                quantity,
                HoldState::Expired,
                "postgres-direct",
            )
            .await?;
            tx.commit().await?;
            return Ok(DirectTransition::Conflict(HoldState::Expired));
        }
        let extended = sqlx::query(
            "UPDATE holds h SET expires_at = now() + make_interval(secs => s.hold_ttl_ms::float8 / 1000),
                    extensions = h.extensions + 1, updated_at = now()
             FROM skus s WHERE h.hold_id = $1 AND s.sku = h.sku AND h.extensions < s.max_extensions",
        )
        .bind(hold_id.uuid())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if extended == 0 {
            return Ok(DirectTransition::ExtensionLimit);
        }
        sqlx::query(
            "INSERT INTO movements (event_id, sku, hold_id, kind, reason, occurred_at)
             VALUES ($1, $2, $3, 'extend', 'postgres-direct', now())",
        )
        .bind(Uuid::new_v4())
        .bind(&sku)
        .bind(hold_id.uuid())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(DirectTransition::Done)
    }

    /// The Postgres-direct reaper: expires due holds; returns how many.
    pub async fn expire_due_direct(&self) -> Result<i64, LedgerError> {
        Ok(sqlx::query_scalar(
            "WITH due AS (
                UPDATE holds SET state = 'expired', updated_at = now()
                WHERE hold_id IN (SELECT hold_id FROM holds WHERE state = 'held' AND expires_at <= now()
                                  ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
                RETURNING hold_id, sku, quantity),
             moved AS (
                INSERT INTO movements (event_id, sku, hold_id, kind, held_delta, reason, occurred_at)
                SELECT gen_random_uuid(), sku, hold_id, 'expire', -quantity, 'postgres-direct', now() FROM due),
             counted AS (
                UPDATE skus SET held = held - d.units, updated_at = now()
                FROM (SELECT sku, sum(quantity) AS units FROM due GROUP BY sku) d WHERE skus.sku = d.sku)
             SELECT count(*) FROM due",
        )
        .bind(EXPIRE_BATCH)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The SKU a number names, from the ledger (when the gate cannot say).
    pub async fn sku_by_no(&self, sku_no: u32) -> Result<Option<SkuId>, LedgerError> {
        let name: Option<String> = sqlx::query_scalar("SELECT sku FROM skus WHERE sku_no = $1")
            .bind(i32::try_from(sku_no).unwrap_or(-1))
            .fetch_optional(&self.pool)
            .await?;
        Ok(name.and_then(|n| SkuId::parse(&n).ok()))
    }
}

/// The earlier outcome of this idempotency key, if it was used.
async fn replay(
    tx: &mut sqlx::PgConnection,
    sku: &SkuId,
    key: &IdempotencyKey,
    fingerprint: &str,
) -> Result<Option<Admission>, LedgerError> {
    let row: Option<(Uuid, Option<String>, OffsetDateTime)> = sqlx::query_as(
        "SELECT hold_id, request_fingerprint, expires_at FROM holds
         WHERE sku = $1 AND idempotency_key = $2 ORDER BY created_at LIMIT 1",
    )
    .bind(sku.as_str())
    .bind(key.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let Some((hold_id, first, expires_at)) = row else {
        return Ok(None);
    };
    if first.as_deref() != Some(fingerprint) {
        return Ok(Some(Admission::KeyReused));
    }
    Ok(Some(Admission::Replayed(Box::new(Admission::Held {
        hold_id: HoldId::from_uuid(hold_id),
        expires_at_ms: ms_from_time(expires_at),
    }))))
}

/// Locks a hold and its SKU row; (sku, state, quantity, past due).
async fn lock_hold(
    tx: &mut sqlx::PgConnection,
    hold_id: HoldId,
) -> Result<Option<(String, HoldState, i64, bool)>, LedgerError> {
    let row: Option<(String, String, i32, bool)> = sqlx::query_as(
        "SELECT h.sku, h.state, h.quantity, h.expires_at <= now() AS expired
         FROM holds h JOIN skus s ON s.sku = h.sku WHERE h.hold_id = $1 FOR UPDATE",
    )
    .bind(hold_id.uuid())
    .fetch_optional(&mut *tx)
    .await?;
    let Some((sku, state, quantity, expired)) = row else {
        return Ok(None);
    };
    Ok(Some((
        sku,
        HoldState::parse(&state)
            .ok_or_else(|| LedgerError::Invariant(format!("hold state {state:?}")))?,
        i64::from(quantity),
        expired,
    )))
}

async fn settle(
    tx: &mut sqlx::PgConnection,
    hold_id: HoldId,
    sku: &str,
    quantity: i64,
    to: HoldState,
    reason: &str,
) -> Result<(), LedgerError> {
    let kind = MovementKind::settling(to).unwrap_or(MovementKind::Expire);
    let sold = if to == HoldState::Confirmed {
        quantity
    } else {
        0
    };
    sqlx::query("UPDATE holds SET state = $2, updated_at = now() WHERE hold_id = $1")
        .bind(hold_id.uuid())
        .bind(to.as_str())
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE skus SET held = held - $2, sold = sold + $3, updated_at = now() WHERE sku = $1",
    )
    .bind(sku)
    .bind(quantity)
    .bind(sold)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO movements (event_id, sku, hold_id, kind, held_delta, sold_delta, reason, occurred_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, now())",
    )
    .bind(Uuid::new_v4())
    .bind(sku)
    .bind(hold_id.uuid())
    .bind(kind.as_str())
    .bind(-quantity)
    .bind(sold)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
