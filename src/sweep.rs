//! The slow sweep over the whole catalogue: each background service follows
//! activity hints for the SKUs that moved (see `gate::activity`), and also
//! looks at a bounded slice of every SKU each pass, round and round. The
//! sweep is what makes a lost hint a delay instead of a loss: whatever a
//! hint would have pointed at is found within one round, that is within
//! `catalogue size / SKUs per pass` passes.

use crate::domain::SkuId;
use crate::gate::{Gate, GateError};
use std::collections::VecDeque;

/// A position in the round over the gate's SKU registry (an `HSCAN`, so
/// the registry is read a page at a time, never whole).
#[derive(Debug, Default)]
pub struct Sweep {
    /// The registry scan's cursor; 0 starts a new round.
    cursor: u64,
    /// SKUs read from the registry and not yet handed out: a page of the
    /// scan holds about as many entries as asked, not exactly as many.
    queue: VecDeque<SkuId>,
}

impl Sweep {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next `count` SKUs of the round (fewer at the end of a round, or
    /// when the catalogue is smaller). A round reaches every SKU that was
    /// registered throughout it; a scan may name a SKU twice, which costs
    /// a second look and nothing else.
    pub async fn next(&mut self, gate: &Gate, count: usize) -> Result<Vec<SkuId>, GateError> {
        while self.queue.len() < count {
            let (next, page) = gate.scan_skus(self.cursor, count).await?;
            self.queue.extend(page);
            self.cursor = next;
            if next == 0 {
                // The end of the round: the next call starts another, so a
                // small catalogue is not handed out twice in one slice.
                break;
            }
        }
        let take = count.min(self.queue.len());
        Ok(self.queue.drain(..take).collect())
    }
}
