//! Reading holds and moving them along their state machine: confirm,
//! release, extend. The gate decides; confirm answers only once the ledger
//! has the confirmation.

use super::{AdmissionMode, AppError, Dropgate, hold_view};
use crate::domain::{Hold, HoldId, HoldState, HoldTransition, SkuId};
use crate::gate::{GateHold, Transition};
use crate::ledger::{DirectTransition, LedgerError};

/// The result of reading or moving a hold, as the API answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldOutcome {
    Ok(Hold),
    /// The hold is in a state that forbids the transition.
    Conflict(HoldState),
    ExtensionLimit,
    NotFound,
}

impl Dropgate {
    pub async fn hold(&self, hold_id: HoldId) -> Result<HoldOutcome, AppError> {
        let Some(sku) = self.sku_of(hold_id).await? else {
            return Ok(HoldOutcome::NotFound);
        };
        let in_gate = match self.admission {
            AdmissionMode::Redis => self.gate.hold(&sku, hold_id).await?,
            AdmissionMode::Postgres => None,
        };
        match in_gate {
            Some(hold) => Ok(self.gate_view(hold_id, &sku, &hold).await),
            None => self.ledger_hold(hold_id).await,
        }
    }

    /// Confirms a hold; answers only once the ledger has the confirmation,
    /// and within one store timeout in all: the gate's decision and the
    /// wait for the ledger share it. When it runs out the answer is
    /// `OutOfTime`, which claims nothing: the gate may have confirmed, and a
    /// retry finds the hold confirmed there and waits for the ledger again.
    pub async fn confirm(&self, hold_id: HoldId) -> Result<HoldOutcome, AppError> {
        let deadline = tokio::time::Instant::now() + self.ledger.store_timeout();
        let decided = within(
            deadline,
            "redis",
            self.transition(hold_id, HoldTransition::Confirm),
        );
        let (sku, transition) = match decided.await? {
            Ok(decided) => decided,
            Err(outcome) => return Ok(outcome),
        };
        let (hold, up_to) = match transition {
            Transition::Done { hold, position } => (hold, Some(position)),
            Transition::Same { hold } => (hold, None),
            other => {
                let refused = self.refused(hold_id, &sku, other, HoldTransition::Confirm);
                return within(deadline, "postgres", refused).await;
            }
        };
        let recorded = async {
            self.flush(&sku, up_to).await?;
            Ok(self.ledger.hold(hold_id).await?)
        };
        match within(deadline, "postgres", recorded).await? {
            Some(ledger) if ledger.state == HoldState::Confirmed => {
                Ok(HoldOutcome::Ok(hold_view(hold_id, &sku, &hold, true)))
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
        let (sku, transition) = match self.transition(hold_id, HoldTransition::Release).await? {
            Ok(decided) => decided,
            Err(outcome) => return Ok(outcome),
        };
        match transition {
            Transition::Done { hold, position } => {
                let durable = self.flush_quietly(&sku, Some(position)).await;
                Ok(HoldOutcome::Ok(hold_view(hold_id, &sku, &hold, durable)))
            }
            Transition::Same { hold } => Ok(self.gate_view(hold_id, &sku, &hold).await),
            other => {
                self.refused(hold_id, &sku, other, HoldTransition::Release)
                    .await
            }
        }
    }

    /// Moves a held hold's expiry to now + the SKU's hold TTL.
    pub async fn extend(&self, hold_id: HoldId) -> Result<HoldOutcome, AppError> {
        let (sku, transition) = match self.transition(hold_id, HoldTransition::Extend).await? {
            Ok(decided) => decided,
            Err(outcome) => return Ok(outcome),
        };
        match transition {
            Transition::Done { hold, .. } | Transition::Same { hold } => {
                Ok(self.gate_view(hold_id, &sku, &hold).await)
            }
            other => {
                self.refused(hold_id, &sku, other, HoldTransition::Extend)
                    .await
            }
        }
    }

    /// Runs a client's hold operation: `Ok` with what the gate decided, or
    /// `Err` with the final answer when there is no such hold or Postgres
    /// decides.
    async fn transition(
        &self,
        hold_id: HoldId,
        operation: HoldTransition,
    ) -> Result<Result<(SkuId, Transition), HoldOutcome>, AppError> {
        if self.admission == AdmissionMode::Postgres {
            return Ok(Err(self.direct(hold_id, operation).await?));
        }
        let Some(sku) = self.sku_of(hold_id).await? else {
            return Ok(Err(HoldOutcome::NotFound));
        };
        let transition = self
            .gate
            .transition(&sku, hold_id, operation)
            .await?
            .open()
            .ok_or(AppError::GateNotBuilt)?;
        Ok(Ok((sku, transition)))
    }

    /// A hold operation done by Postgres alone.
    async fn direct(
        &self,
        hold_id: HoldId,
        operation: HoldTransition,
    ) -> Result<HoldOutcome, AppError> {
        let transition = match operation {
            HoldTransition::Extend => self.ledger.extend_direct(hold_id).await?,
            other => self.ledger.settle_direct(hold_id, other.target()).await?,
        };
        Ok(match transition {
            DirectTransition::Done | DirectTransition::Same => self.ledger_hold(hold_id).await?,
            DirectTransition::Conflict(state) => HoldOutcome::Conflict(state),
            DirectTransition::ExtensionLimit => HoldOutcome::ExtensionLimit,
            DirectTransition::NoHold => HoldOutcome::NotFound,
        })
    }

    /// The answer when the gate did not make the transition.
    async fn refused(
        &self,
        hold_id: HoldId,
        sku: &SkuId,
        transition: Transition,
        operation: HoldTransition,
    ) -> Result<HoldOutcome, AppError> {
        Ok(match transition {
            Transition::Conflict { hold, position } => {
                // It may have just expired: get that event to the ledger.
                self.flush_quietly(sku, position).await;
                HoldOutcome::Conflict(hold.state)
            }
            Transition::ExtensionLimit { .. } => HoldOutcome::ExtensionLimit,
            Transition::NoHold => {
                return self.settled_elsewhere(hold_id, operation.target()).await;
            }
            Transition::Done { hold, .. } | Transition::Same { hold } => {
                self.gate_view(hold_id, sku, &hold).await
            }
        })
    }

    /// A hold as the gate has it, `durable` if the ledger has it too (the
    /// ledger being away only means "not known to be durable").
    async fn gate_view(&self, hold_id: HoldId, sku: &SkuId, hold: &GateHold) -> HoldOutcome {
        let durable = matches!(self.ledger.hold(hold_id).await, Ok(Some(_)));
        HoldOutcome::Ok(hold_view(hold_id, sku, hold, durable))
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

    /// A hold the gate no longer has (settled long ago): the ledger's view.
    /// A hold neither store has, whose id may have been issued by a gate
    /// that was since replaced, was admitted by that gate and never reached
    /// the ledger: lost. Its id still says how many units it held; no store
    /// kept its customer.
    pub(super) async fn ledger_hold(&self, hold_id: HoldId) -> Result<HoldOutcome, AppError> {
        let Some(h) = self.ledger.hold(hold_id).await? else {
            let (Some(lost_by), Some(sku)) = (
                self.ledger.replaced_gate_since(hold_id).await?,
                self.ledger.sku_by_no(hold_id.sku_no()).await?,
            ) else {
                return Ok(HoldOutcome::NotFound);
            };
            return Ok(HoldOutcome::Ok(Hold {
                hold_id,
                sku,
                customer_id: None,
                quantity: hold_id.quantity(),
                state: HoldState::Lost,
                expires_at: lost_by,
                extensions: 0,
                durable: false,
            }));
        };
        Ok(HoldOutcome::Ok(Hold {
            hold_id,
            sku: h.sku,
            customer_id: Some(h.customer_id),
            quantity: h.quantity,
            state: h.state,
            expires_at: h.expires_at,
            extensions: h.extensions,
            durable: true,
        }))
    }
}

/// `work`, unless `deadline` passes first: then `OutOfTime`, blaming
/// `dependency`, the store it was waiting for.
async fn within<T>(
    deadline: tokio::time::Instant,
    dependency: &'static str,
    work: impl std::future::Future<Output = Result<T, AppError>>,
) -> Result<T, AppError> {
    tokio::time::timeout_at(deadline, work)
        .await
        .unwrap_or(Err(AppError::OutOfTime(dependency)))
}
