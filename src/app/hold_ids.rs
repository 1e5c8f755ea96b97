//! Issuing and verifying hold ids: serials from blocks the ledger hands
//! out, signed with the ledger's key (see [`HoldId`]).

use crate::domain::{HoldId, HoldIdKey, Quantity};
use crate::ledger::{Ledger, LedgerError};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use uuid::Uuid;

/// This process's issuer of hold ids.
pub(super) struct HoldIds {
    key: HoldIdKey,
    serials: Mutex<Serials>,
}

/// The serials this process may issue. Those it has not issued when it
/// stops are never issued.
struct Serials {
    current: Range<u64>,
    /// The next block, taken before `current` runs out, so admission goes on
    /// through a short Postgres outage.
    spare: Option<Range<u64>>,
    /// A spare block is being taken.
    taking: bool,
}

fn block_serials(block: u64) -> Range<u64> {
    block << HoldId::BLOCK_BITS..(block + 1) << HoldId::BLOCK_BITS
}

impl HoldIds {
    /// Loads the ledger's key and takes a first block.
    pub(super) async fn load(ledger: &Ledger) -> Result<Self, LedgerError> {
        Ok(Self {
            key: ledger.hold_id_key().await?,
            serials: Mutex::new(Serials {
                current: block_serials(ledger.take_hold_id_block().await?),
                spare: None,
                taking: false,
            }),
        })
    }

    pub(super) fn key(&self) -> &HoldIdKey {
        &self.key
    }

    /// The hold id `uuid` is, if this ledger issued it.
    pub(super) fn verify(&self, uuid: Uuid) -> Option<HoldId> {
        HoldId::verify(&self.key, uuid)
    }

    /// A fresh id for a hold of `quantity` units of SKU number `sku_no`.
    pub(super) async fn issue(
        self: &Arc<Self>,
        ledger: &Ledger,
        sku_no: u32,
        quantity: Quantity,
    ) -> Result<HoldId, LedgerError> {
        let serial = self.serial(ledger).await?;
        Ok(HoldId::issue(&self.key, serial, sku_no, quantity))
    }

    /// A serial no other id of this ledger has or will have.
    pub(super) async fn serial(self: &Arc<Self>, ledger: &Ledger) -> Result<u64, LedgerError> {
        loop {
            if let Some(serial) = self.next(ledger) {
                return Ok(serial);
            }
            // Both blocks used up (the ledger was away): take one inline.
            // Concurrent callers may each take one; the spare ones are only
            // skipped serials.
            let block = block_serials(ledger.take_hold_id_block().await?);
            let mut serials = self.lock();
            if serials.current.is_empty() {
                serials.current = block;
            }
        }
    }

    /// The next serial in hand; starts taking a spare block once half the
    /// current one is used.
    fn next(self: &Arc<Self>, ledger: &Ledger) -> Option<u64> {
        let mut serials = self.lock();
        if serials.current.is_empty() {
            serials.current = serials.spare.take()?;
        }
        let serial = serials.current.next()?;
        let half_used = serials.current.end - serials.current.start < 1 << (HoldId::BLOCK_BITS - 1);
        if half_used && serials.spare.is_none() && !serials.taking {
            serials.taking = true;
            let (ids, ledger) = (Arc::clone(self), ledger.clone());
            tokio::spawn(async move {
                let taken = ledger.take_hold_id_block().await;
                let mut serials = ids.lock();
                serials.taking = false;
                match taken {
                    Ok(block) => serials.spare = Some(block_serials(block)),
                    Err(error) => tracing::warn!(%error, "could not take a block of hold ids yet"),
                }
            });
        }
        Some(serial)
    }

    fn lock(&self) -> MutexGuard<'_, Serials> {
        // The serials are never left half-updated.
        self.serials.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
