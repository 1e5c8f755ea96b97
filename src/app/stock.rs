//! Reading SKUs and changing their stock: `PUT` and adjustments.

use super::{AdmissionMode, AppError, Dropgate};
use crate::domain::{Sku, SkuId, SkuSettings};
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
        let epoch = self.require_gate().await?;
        let sku_no = self.ledger.ensure_sku(sku, &settings).await?;
        self.gate.register_sku(sku_no, sku).await?;
        let reason = format!("on_hand set to {} by PUT", settings.on_hand);
        let change = SetSku::new(
            sku.clone(),
            StockChange::Put { settings, sku_no },
            &reason,
            epoch,
            self.now_ms(),
        );
        let change = self
            .gate
            .set_sku(&change)
            .await?
            .open()
            .ok_or(AppError::GateNotBuilt)?;
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
        let change = SetSku::new(
            sku.clone(),
            StockChange::Adjust { delta },
            reason,
            epoch,
            self.now_ms(),
        );
        let change = self
            .gate
            .set_sku(&change)
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
                self.flush(sku, None).await?;
                SkuOutcome::Created(Sku {
                    sku: sku.clone(),
                    figures,
                })
            }
            SkuChange::Updated(figures) => {
                self.flush(sku, None).await?;
                SkuOutcome::Updated(Sku {
                    sku: sku.clone(),
                    figures,
                })
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
