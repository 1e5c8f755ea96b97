//! What the ledger hands the gate when the gate is rebuilt, and the ledger
//! side of reconciliation.

use super::{Ledger, LedgerError, LedgerSku};
use crate::domain::{ms_from_time, now_ms, HoldId, HoldState, SkuId};
use crate::gate::{GateSku, RebuiltHold, RebuiltSku};
use sqlx::Row;
use time::OffsetDateTime;
use uuid::Uuid;

/// Idempotency records are rebuilt for holds younger than this.
const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;

impl Ledger {
    /// Starts a new gate epoch; every event of an older one is fenced off.
    pub async fn start_epoch(&self, reason: &str) -> Result<i64, LedgerError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO gate_epochs (epoch, reason)
             SELECT coalesce(max(epoch), 0) + 1, $1 FROM gate_epochs RETURNING epoch",
        )
        .bind(reason)
        .fetch_one(&self.pool)
        .await?)
    }

    /// True when a hold id the ledger does not have was minted between its
    /// SKU's creation and the start of the current gate epoch: a gate that
    /// was since lost issued it and never got it into the ledger.
    pub async fn issued_by_a_lost_gate(&self, hold_id: HoldId) -> Result<bool, LedgerError> {
        let window: Option<(OffsetDateTime, OffsetDateTime)> = sqlx::query_as(
            "SELECT s.created_at, (SELECT max(started_at) FROM gate_epochs)
             FROM skus s WHERE s.sku_no = $1",
        )
        .bind(i32::try_from(hold_id.sku_no()).unwrap_or(-1))
        .fetch_optional(&self.pool)
        .await?;
        Ok(window.is_some_and(|(from, to)| {
            (ms_from_time(from)..ms_from_time(to)).contains(&hold_id.created_ms())
        }))
    }

    /// Moves the SKU to `epoch` and reads what the gate must hold for it:
    /// counters, live holds, per-customer units, recent idempotency records.
    pub async fn gate_source(
        &self,
        sku: &LedgerSku,
        epoch: i64,
    ) -> Result<RebuiltSku, LedgerError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE skus SET epoch = $2, applied_seq = -1, updated_at = now() WHERE sku = $1
             RETURNING on_hand, held, sold, per_customer_limit, hold_ttl_ms, max_extensions",
        )
        .bind(sku.sku.as_str())
        .bind(epoch)
        .fetch_one(&mut *tx)
        .await?;
        let figures = GateSku {
            on_hand: row.try_get("on_hand")?,
            held: row.try_get("held")?,
            sold: row.try_get("sold")?,
            per_customer_limit: i64::from(row.try_get::<i32, _>("per_customer_limit")?),
            hold_ttl_ms: row.try_get("hold_ttl_ms")?,
            max_extensions: i64::from(row.try_get::<i32, _>("max_extensions")?),
        };
        let holds = sqlx::query(
            "SELECT hold_id, customer_id, quantity, expires_at, extensions, created_at
             FROM holds WHERE sku = $1 AND state = 'held'",
        )
        .bind(sku.sku.as_str())
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| {
            Ok(RebuiltHold {
                hold_id: HoldId::from_uuid(r.try_get("hold_id")?),
                customer_id: r.try_get("customer_id")?,
                quantity: i64::from(r.try_get::<i32, _>("quantity")?),
                expires_at_ms: ms_from_time(r.try_get("expires_at")?),
                extensions: i64::from(r.try_get::<i32, _>("extensions")?),
                created_ms: ms_from_time(r.try_get("created_at")?),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let customers: Vec<(String, i64)> = sqlx::query_as(
            "SELECT customer_id, sum(quantity)::int8 FROM holds
             WHERE sku = $1 AND state IN ('held', 'confirmed') GROUP BY customer_id",
        )
        .bind(sku.sku.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let now = now_ms();
        let idempotency = sqlx::query(
            "SELECT hold_id, idempotency_key, request_fingerprint, created_at, expires_at
             FROM holds WHERE sku = $1 AND idempotency_key IS NOT NULL
               AND created_at > now() - interval '24 hours'",
        )
        .bind(sku.sku.as_str())
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| {
            let hold_id: Uuid = r.try_get("hold_id")?;
            let key: String = r.try_get("idempotency_key")?;
            let fingerprint: String = r.try_get("request_fingerprint")?;
            let created = ms_from_time(r.try_get("created_at")?);
            let record = format!(
                "{fingerprint}|H|{}|{}",
                hold_id.hyphenated(),
                ms_from_time(r.try_get("expires_at")?)
            );
            Ok((key, record, created + IDEMPOTENCY_WINDOW_MS - now))
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        tx.commit().await?;
        Ok(RebuiltSku {
            sku: sku.sku.clone(),
            sku_no: sku.sku_no,
            epoch,
            figures,
            holds,
            customers,
            idempotency,
        })
    }

    /// Appends the audit record of a reconciler repair. The ledger's own
    /// counters do not move: it was right; the gate was corrected.
    pub async fn record_reconcile(&self, sku: &SkuId, reason: &str) -> Result<Uuid, LedgerError> {
        let event_id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO movements (event_id, sku, kind, reason, occurred_at)
             VALUES ($1, $2, 'reconcile', $3, now())",
        )
        .bind(event_id)
        .bind(sku.as_str())
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(event_id)
    }

    /// Holds still `held` in the ledger well past their expiry: the gate
    /// should have settled them by now.
    pub async fn overdue_holds(
        &self,
        sku: &SkuId,
        grace_ms: i64,
        limit: i64,
    ) -> Result<Vec<HoldId>, LedgerError> {
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT hold_id FROM holds WHERE sku = $1 AND state = 'held'
               AND expires_at < now() - make_interval(secs => $2::float8 / 1000) LIMIT $3",
        )
        .bind(sku.as_str())
        .bind(grace_ms as f64)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(HoldId::from_uuid).collect())
    }

    /// Settles a hold the gate settled but whose event never reached the
    /// ledger, with a movement saying so. False if it was not `held` here.
    pub async fn settle_orphan(
        &self,
        sku: &SkuId,
        hold_id: HoldId,
        to: HoldState,
    ) -> Result<bool, LedgerError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT 1 FROM skus WHERE sku = $1 FOR UPDATE")
            .bind(sku.as_str())
            .execute(&mut *tx)
            .await?;
        let quantity: Option<i32> = sqlx::query_scalar(
            "UPDATE holds SET state = $2, updated_at = now() WHERE hold_id = $1 AND state = 'held' RETURNING quantity",
        )
        .bind(hold_id.uuid())
        .bind(to.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(quantity) = quantity.map(i64::from) else {
            return Ok(false);
        };
        let sold = if to == HoldState::Confirmed {
            quantity
        } else {
            0
        };
        let kind = match to {
            HoldState::Confirmed => "confirm",
            HoldState::Released => "release",
            _ => "expire",
        };
        sqlx::query(
            "INSERT INTO movements (event_id, sku, hold_id, kind, held_delta, sold_delta, reason, occurred_at)
             VALUES ($1, $2, $3, $4, $5, $6, 'reconciler: the gate settled this hold; its event never reached the ledger', now())",
        )
        .bind(Uuid::new_v4())
        .bind(sku.as_str())
        .bind(hold_id.uuid())
        .bind(kind)
        .bind(-quantity)
        .bind(sold)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE skus SET held = held - $2, sold = sold + $3, updated_at = now() WHERE sku = $1",
        )
        .bind(sku.as_str())
        .bind(quantity)
        .bind(sold)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Every SKU, in id order.
    pub async fn all_skus(&self) -> Result<Vec<LedgerSku>, LedgerError> {
        let mut all = Vec::new();
        let mut after: Option<SkuId> = None;
        loop {
            let page = self.skus(after.as_ref(), 500).await?;
            let done = page.len() < 500;
            after = page.last().map(|s| s.sku.clone());
            all.extend(page);
            if done {
                return Ok(all);
            }
        }
    }
}
