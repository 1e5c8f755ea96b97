//! What the ledger hands the gate when the gate is rebuilt, and the ledger
//! side of reconciliation.

use super::{Ledger, LedgerError, LedgerSku};
use crate::domain::{
    AdmittedKey, HoldId, HoldState, IDEMPOTENCY_TTL_MS, LiveHold, MovementKind, SkuId, SkuSnapshot,
    ms_from_time,
};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct LiveHoldRow {
    hold_id: Uuid,
    customer_id: String,
    quantity: i32,
    expires_at: OffsetDateTime,
    extensions: i32,
    created_at: OffsetDateTime,
}

impl From<LiveHoldRow> for LiveHold {
    fn from(row: LiveHoldRow) -> Self {
        Self {
            hold_id: HoldId::from_uuid(row.hold_id),
            customer_id: row.customer_id,
            quantity: i64::from(row.quantity),
            expires_at_ms: ms_from_time(row.expires_at),
            extensions: i64::from(row.extensions),
            created_ms: ms_from_time(row.created_at),
        }
    }
}

#[derive(sqlx::FromRow)]
struct AdmittedKeyRow {
    hold_id: Uuid,
    idempotency_key: String,
    request_fingerprint: String,
    created_at: OffsetDateTime,
    expires_at: OffsetDateTime,
}

impl From<AdmittedKeyRow> for AdmittedKey {
    fn from(row: AdmittedKeyRow) -> Self {
        Self {
            key: row.idempotency_key,
            fingerprint: row.request_fingerprint,
            hold_id: HoldId::from_uuid(row.hold_id),
            expires_at_ms: ms_from_time(row.expires_at),
            created_ms: ms_from_time(row.created_at),
        }
    }
}

impl Ledger {
    /// Starts a new gate epoch; every event of an older one is fenced off.
    /// The new epoch is above `above` too: a gate left by another ledger may
    /// have counted further, and its events must stay fenced off.
    pub async fn start_epoch(&self, reason: &str, above: i64) -> Result<i64, LedgerError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO gate_epochs (epoch, reason, hold_id_block)
             SELECT greatest(coalesce(max(epoch), 0), $2) + 1, $1,
                    (SELECT CASE WHEN is_called THEN last_value ELSE -1 END FROM hold_id_blocks)
             FROM gate_epochs RETURNING epoch",
        )
        .bind(reason)
        .bind(above)
        .fetch_one(&self.pool)
        .await?)
    }

    /// When the gate that may have issued `hold_id` was replaced: the start
    /// of the first epoch begun after the id's serial block was taken. A
    /// hold neither store has was lost with that gate, by then at the
    /// latest. `None` when no gate was replaced since.
    pub async fn replaced_gate_since(
        &self,
        hold_id: HoldId,
    ) -> Result<Option<OffsetDateTime>, LedgerError> {
        Ok(sqlx::query_scalar(
            "SELECT started_at FROM gate_epochs WHERE hold_id_block >= $1 ORDER BY epoch LIMIT 1",
        )
        .bind(i64::try_from(hold_id.block()).unwrap_or(i64::MAX))
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Moves the SKU to `epoch` and reads what the gate must hold for it:
    /// counters, live holds, per-customer units, admissions whose keys still
    /// replay.
    pub async fn snapshot_for_epoch(
        &self,
        sku: &SkuId,
        epoch: i64,
    ) -> Result<SkuSnapshot, LedgerError> {
        let mut tx = self.pool.begin().await?;
        let row: LedgerSku = sqlx::query_as::<_, super::SkuRow>(concat!(
            "UPDATE skus SET epoch = $2, applied_seq = -1, updated_at = now() WHERE sku = $1
             RETURNING ",
            super::sku_columns!()
        ))
        .bind(sku.as_str())
        .bind(epoch)
        .fetch_one(&mut *tx)
        .await?
        .try_into()?;
        let holds = sqlx::query_as::<_, LiveHoldRow>(
            "SELECT hold_id, customer_id, quantity, expires_at, extensions, created_at
             FROM holds WHERE sku = $1 AND state = 'held'",
        )
        .bind(sku.as_str())
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(LiveHold::from)
        .collect();
        let customers: Vec<(String, i64)> = sqlx::query_as(
            "SELECT customer_id, sum(quantity)::int8 FROM holds
             WHERE sku = $1 AND state IN ('held', 'confirmed') GROUP BY customer_id",
        )
        .bind(sku.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let keys = sqlx::query_as::<_, AdmittedKeyRow>(
            "SELECT hold_id, idempotency_key, request_fingerprint, created_at, expires_at
             FROM holds WHERE sku = $1 AND idempotency_key IS NOT NULL
               AND request_fingerprint IS NOT NULL
               AND created_at > now() - make_interval(secs => $2::float8 / 1000)",
        )
        .bind(sku.as_str())
        .bind(IDEMPOTENCY_TTL_MS as f64)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(AdmittedKey::from)
        .collect();
        tx.commit().await?;
        Ok(SkuSnapshot {
            sku: row.sku,
            sku_no: row.sku_no,
            epoch,
            figures: row.figures,
            holds,
            customers,
            keys,
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

    /// [`overdue_holds`](Self::overdue_holds) of every SKU at once, oldest
    /// expiry first, at most `limit`: one query however many SKUs there are.
    pub async fn overdue_holds_anywhere(
        &self,
        grace_ms: i64,
        limit: i64,
    ) -> Result<Vec<(SkuId, HoldId)>, LedgerError> {
        let rows: Vec<(String, Uuid)> = sqlx::query_as(
            "SELECT sku, hold_id FROM holds WHERE state = 'held'
               AND expires_at < now() - make_interval(secs => $1::float8 / 1000)
             ORDER BY expires_at LIMIT $2",
        )
        .bind(grace_ms as f64)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(sku, hold_id)| {
                let sku = SkuId::parse(&sku).map_err(|e| LedgerError::Invariant(e.to_string()))?;
                Ok((sku, HoldId::from_uuid(hold_id)))
            })
            .collect()
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
        let kind = MovementKind::settling(to).unwrap_or(MovementKind::Expire);
        sqlx::query(
            "INSERT INTO movements (event_id, sku, hold_id, kind, held_delta, sold_delta, reason, occurred_at)
             VALUES ($1, $2, $3, $4, $5, $6, 'reconciler: the gate settled this hold; its event never reached the ledger', now())",
        )
        .bind(Uuid::new_v4())
        .bind(sku.as_str())
        .bind(hold_id.uuid())
        .bind(kind.as_str())
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
