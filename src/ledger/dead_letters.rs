//! Events set aside because the ledger refuses them however often they are
//! tried. Setting one aside advances its SKU's applied position past it, in
//! the same transaction, so the rest of the stream keeps committing; the
//! gate's figures then differ from the ledger's by that event, which the
//! reconciler reports (and corrects in the gate, audited) unless an
//! operator retries the event first.

use super::{Ledger, LedgerError};
use crate::domain::{Event, MovementKind, SkuId};
use std::collections::BTreeMap;
use uuid::Uuid;

/// A dead letter as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct DeadLetter {
    pub event_id: Uuid,
    pub sku: String,
    pub epoch: i64,
    pub seq: i64,
    /// The event as JSON.
    pub event: String,
    pub error: String,
    pub state: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
    pub resolution: Option<String>,
}

/// What an operator decided about a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Apply it now (after the cause was fixed, e.g. a schema change).
    Retry,
    /// Never apply it; record a `reconcile` movement saying so.
    Void,
}

impl Ledger {
    /// Sets `event` aside with the reason, and moves the SKU's applied
    /// position past it. False when the event is not the next one the SKU
    /// expects (then it was applied or set aside meanwhile).
    pub async fn dead_letter(
        &self,
        sku: &SkuId,
        event: &Event,
        error: &str,
    ) -> Result<bool, LedgerError> {
        let mut tx = self.pool.begin().await?;
        let applied: Option<(i64, i64)> =
            sqlx::query_as("SELECT epoch, applied_seq FROM skus WHERE sku = $1 FOR UPDATE")
                .bind(sku.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let Some((epoch, seq)) = applied else {
            return Ok(false);
        };
        if event.position <= (crate::domain::Position { epoch, seq }) {
            return Ok(false);
        }
        let json = serde_json::to_string(event)
            .map_err(|e| LedgerError::Invariant(format!("event {}: {e}", event.event_id)))?;
        sqlx::query(
            "INSERT INTO dead_letters (event_id, sku, epoch, seq, event, error)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(event.event_id)
        .bind(sku.as_str())
        .bind(event.position.epoch)
        .bind(event.position.seq)
        .bind(&json)
        .bind(printable(error))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE skus SET epoch = $2, applied_seq = $3, updated_at = now() WHERE sku = $1",
        )
        .bind(sku.as_str())
        .bind(event.position.epoch)
        .bind(event.position.seq)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Dead letters, open ones first, newest first.
    pub async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetter>, LedgerError> {
        Ok(sqlx::query_as(
            "SELECT event_id, sku, epoch, seq, event, error, state, created_at, resolution
             FROM dead_letters ORDER BY state = 'open' DESC, created_at DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Open dead letters, for metrics and the dashboard.
    pub async fn open_dead_letters(&self) -> Result<i64, LedgerError> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE state = 'open'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Retries or voids an open dead letter. A retry applies the event on
    /// its own, whatever the SKU's position (its later events were applied
    /// without it); a void records a `reconcile` movement. Either way the
    /// dead letter is closed with what happened. `None` when there is no
    /// open dead letter with that id.
    pub async fn resolve_dead_letter(
        &self,
        event_id: Uuid,
        resolution: Resolution,
        note: &str,
    ) -> Result<Option<String>, LedgerError> {
        let open: Option<(String, String)> = sqlx::query_as(
            "SELECT sku, event FROM dead_letters WHERE event_id = $1 AND state = 'open'",
        )
        .bind(event_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some((sku, json)) = open else {
            return Ok(None);
        };
        let sku = SkuId::parse(&sku).map_err(|e| LedgerError::Invariant(e.to_string()))?;
        let outcome = match resolution {
            Resolution::Retry => {
                let mut event: Event = serde_json::from_str(&json)
                    .map_err(|e| LedgerError::Invariant(format!("dead letter {event_id}: {e}")))?;
                // The usual poison is a control character Postgres refuses in
                // text: the retry keeps the text, escaped.
                if let crate::domain::Change::Adjust { reason, .. } = &mut event.change {
                    *reason = printable(reason);
                }
                let report = self
                    .apply_out_of_order(&BTreeMap::from([(sku.clone(), vec![event])]))
                    .await?;
                format!(
                    "retried: {} applied, {} skipped",
                    report.applied, report.skipped
                )
            }
            Resolution::Void => {
                sqlx::query(
                    "INSERT INTO movements (event_id, sku, kind, reason, occurred_at)
                     VALUES ($1, $2, $3, $4, now())",
                )
                .bind(Uuid::new_v4())
                .bind(sku.as_str())
                .bind(MovementKind::Reconcile.as_str())
                .bind(format!(
                    "dead letter {event_id} voided by an operator: {}",
                    printable(note)
                ))
                .execute(&self.pool)
                .await?;
                "voided".to_owned()
            }
        };
        let state = match resolution {
            Resolution::Retry => "retried",
            Resolution::Void => "voided",
        };
        sqlx::query(
            "UPDATE dead_letters SET state = $2, resolved_at = now(), resolution = $3
             WHERE event_id = $1",
        )
        .bind(event_id)
        .bind(state)
        .bind(format!("{outcome}; {}", printable(note)))
        .execute(&self.pool)
        .await?;
        Ok(Some(outcome))
    }
}

/// `text` with control characters escaped, safe for any text column.
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_unicode().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}
