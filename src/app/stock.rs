//! Reading SKUs and changing their stock: `PUT` and adjustments.

use super::{AdmissionMode, AppError, Dropgate};
use crate::domain::{
    IdempotencyKey, Sku, SkuId, SkuSettings, StockRequest, stock_change_fingerprint,
};
use crate::gate::{SetSku, SkuChange, StockChange};

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
    /// The idempotency key's first answer.
    Replayed {
        created: bool,
        sku: Sku,
    },
    /// The idempotency key was used for another change.
    KeyReused,
}

impl Dropgate {
    /// A SKU's figures: from the gate, or the ledger when Postgres decides.
    pub async fn sku(&self, sku: &SkuId) -> Result<Option<Sku>, AppError> {
        if self.admission == AdmissionMode::Postgres {
            return Ok(self.ledger.sku(sku).await?.map(|row| Sku {
                sku: row.sku,
                figures: row.figures,
            }));
        }
        match self.gate.sku(sku).await? {
            Some(figures) => Ok(Some(Sku {
                sku: sku.clone(),
                figures,
            })),
            None => {
                self.require_gate().await?;
                Ok(None)
            }
        }
    }

    /// One page of SKUs in id order, after `after`.
    pub async fn skus(&self, after: Option<&SkuId>, limit: i64) -> Result<Vec<Sku>, AppError> {
        let rows = self.ledger.skus(after, limit).await?;
        if self.admission == AdmissionMode::Postgres {
            return Ok(rows
                .into_iter()
                .map(|row| Sku {
                    sku: row.sku,
                    figures: row.figures,
                })
                .collect());
        }
        let mut skus = Vec::with_capacity(rows.len());
        for row in rows {
            if let Some(figures) = self.gate.sku(&row.sku).await? {
                skus.push(Sku {
                    sku: row.sku,
                    figures,
                });
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
        self.change_stock(sku, StockRequest::Put(settings), None)
            .await
    }

    /// Adds `delta` (possibly negative) to a SKU's on_hand.
    pub async fn adjust_sku(
        &self,
        sku: &SkuId,
        delta: i64,
        reason: &str,
    ) -> Result<SkuOutcome, AppError> {
        let request = StockRequest::Adjust {
            delta,
            reason: reason.to_owned(),
        };
        self.change_stock(sku, request, None).await
    }

    /// Changes a SKU's stock, remembered under the client's idempotency
    /// `key` when there is one.
    ///
    /// The gate decides and the ledger records, as for holds: only the gate
    /// knows this instant's `held + sold` (the ledger lags by the commit
    /// window), so only it can refuse a change that would put on_hand below
    /// them. The change and its event are one script; once it ran, the
    /// change happened and the answer says so, whether or not the inline
    /// write to the ledger succeeded (the worker commits it otherwise). A
    /// retry with the same key replays the first answer instead of moving
    /// stock again.
    pub async fn change_stock(
        &self,
        sku: &SkuId,
        request: StockRequest,
        key: Option<&IdempotencyKey>,
    ) -> Result<SkuOutcome, AppError> {
        let epoch = self.require_gate().await?;
        let (change, reason) = match &request {
            StockRequest::Put(settings) => {
                let sku_no = self.ledger.ensure_sku(sku, settings).await?;
                self.gate.register_sku(sku_no, sku).await?;
                let change = StockChange::Put {
                    settings: *settings,
                    sku_no,
                };
                (
                    change,
                    format!("on_hand set to {} by PUT", settings.on_hand),
                )
            }
            StockRequest::Adjust { delta, reason } => {
                (StockChange::Adjust { delta: *delta }, reason.clone())
            }
        };
        let mut set = SetSku::new(sku.clone(), change, &reason, epoch);
        if let Some(key) = key {
            set = set.with_key(key.as_str(), stock_change_fingerprint(&request));
        }
        let change = self
            .gate
            .set_sku(&set)
            .await?
            .open()
            .ok_or(AppError::GateNotBuilt)?;
        self.finish_stock_change(sku, change).await
    }

    async fn finish_stock_change(
        &self,
        sku: &SkuId,
        change: SkuChange,
    ) -> Result<SkuOutcome, AppError> {
        Ok(match change {
            SkuChange::Created(figures) => {
                self.record_stock_change(sku).await;
                SkuOutcome::Created(Sku {
                    sku: sku.clone(),
                    figures,
                })
            }
            SkuChange::Updated(figures) => {
                self.record_stock_change(sku).await;
                SkuOutcome::Updated(Sku {
                    sku: sku.clone(),
                    figures,
                })
            }
            SkuChange::Replayed { created, figures } => {
                // The first attempt may have answered 5xx before its ledger
                // write: try again now.
                self.record_stock_change(sku).await;
                SkuOutcome::Replayed {
                    created,
                    sku: Sku {
                        sku: sku.clone(),
                        figures,
                    },
                }
            }
            SkuChange::KeyReused => SkuOutcome::KeyReused,
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

    /// Writes a stock change to the ledger now if it can; the worker does
    /// otherwise. The change happened either way.
    async fn record_stock_change(&self, sku: &SkuId) {
        if let Err(error) = self.flush(sku, None).await {
            tracing::warn!(%sku, %error, "stock change answered; its ledger write is left to the worker");
        }
    }
}
