//! Admitting holds: one script in the gate, or one conditional UPDATE in
//! Postgres for the Postgres-direct peer.

use super::{AdmissionMode, AppError, Dropgate};
use crate::domain::{
    Admission, CustomerId, Hold, HoldState, IdempotencyKey, Quantity, SkuId, fingerprint,
    time_from_ms,
};
use crate::gate::Admit;
use crate::ledger::DirectAdmission;

/// An admission as the API answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub outcome: Admission,
    /// The hold, when the outcome (or the replayed one) holds units.
    pub hold: Option<Hold>,
}

impl Dropgate {
    /// Admits a hold for `customer`, named by the client's idempotency `key`.
    pub async fn admit(
        &self,
        sku: &SkuId,
        customer: &CustomerId,
        quantity: Quantity,
        key: &IdempotencyKey,
    ) -> Result<Admitted, AppError> {
        let outcome = match self.admission {
            AdmissionMode::Redis => self.admit_in_gate(sku, customer, quantity, key).await?,
            AdmissionMode::Postgres => {
                self.ledger
                    .admit_direct(DirectAdmission {
                        sku,
                        customer,
                        quantity,
                        key,
                        fingerprint: &fingerprint(customer, quantity),
                        serial: self.hold_ids.serial(&self.ledger).await?,
                        id_key: self.hold_ids.key(),
                    })
                    .await?
            }
        };
        let hold = outcome.held().map(|(hold_id, expires_at_ms)| Hold {
            hold_id,
            sku: sku.clone(),
            customer_id: Some(customer.as_str().to_owned()),
            quantity: i64::from(quantity.get()),
            state: HoldState::Held,
            expires_at: time_from_ms(expires_at_ms),
            extensions: 0,
            durable: false,
        });
        Ok(Admitted { outcome, hold })
    }

    async fn admit_in_gate(
        &self,
        sku: &SkuId,
        customer: &CustomerId,
        quantity: Quantity,
        key: &IdempotencyKey,
    ) -> Result<Admission, AppError> {
        if self.is_unknown_to_ledger(sku) {
            return Err(AppError::UnknownToLedger);
        }
        let Some(sku_no) = self.sku_no(sku).await? else {
            // Unknown, or the gate lost its data: only the epoch tells.
            self.require_gate().await?;
            return Ok(Admission::UnknownSku);
        };
        let hold_id = self.hold_ids.issue(&self.ledger, sku_no, quantity).await?;
        let request = Admit::new(
            sku.clone(),
            hold_id,
            customer.clone(),
            quantity,
            key.clone(),
        );
        let outcome = self
            .gate
            .admit(&request)
            .await?
            .open()
            .ok_or(AppError::GateNotBuilt)?;
        if outcome == Admission::UnknownSku {
            self.require_gate().await?;
        }
        if let (Admission::Held { .. }, Some((replicas, timeout_ms))) =
            (&outcome, self.replica_wait)
        {
            let acknowledged = self.gate.wait_for_replicas(replicas, timeout_ms).await?;
            if acknowledged < replicas {
                // The hold exists on the primary; answering 503 would only
                // make the client retry into a replay. Count it instead.
                metrics::counter!(crate::telemetry::metric::REDIS_WAIT_SHORT_TOTAL).increment(1);
                tracing::warn!(
                    acknowledged,
                    replicas,
                    "admission not yet on enough replicas"
                );
            }
        }
        Ok(outcome)
    }
}
