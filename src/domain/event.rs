use super::{HoldId, HoldState};
use uuid::Uuid;

/// Where an event sits in its SKU's stream: the gate epoch it was written in
/// and its sequence within that epoch. The stream id is `<epoch>-<seq>`, so
/// stream order, ledger order and epoch fencing are one comparison.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Position {
    pub epoch: i64,
    pub seq: i64,
}

impl Position {
    pub fn parse(stream_id: &str) -> Option<Self> {
        let (epoch, seq) = stream_id.split_once('-')?;
        Some(Self {
            epoch: epoch.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    pub fn stream_id(self) -> String {
        format!("{}-{}", self.epoch, self.seq)
    }

    /// The position right after this one in the same epoch.
    pub fn next(self) -> Self {
        Self {
            epoch: self.epoch,
            seq: self.seq + 1,
        }
    }
}

/// One change of stock or of a hold, as the gate decided it. Serializable
/// so an event the ledger refused can be kept aside as it was.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    pub position: Position,
    pub event_id: Uuid,
    pub occurred_at_ms: i64,
    pub change: Change,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    Admit {
        hold_id: HoldId,
        customer_id: String,
        quantity: i64,
        expires_at_ms: i64,
        idempotency_key: String,
        fingerprint: String,
    },
    /// The hold left `held` for `to` (confirmed, released or expired).
    Settle {
        hold_id: HoldId,
        to: HoldState,
        quantity: i64,
    },
    Extend {
        hold_id: HoldId,
        expires_at_ms: i64,
    },
    Adjust {
        on_hand_delta: i64,
        per_customer_limit: i64,
        hold_ttl_ms: i64,
        max_extensions: i64,
        reason: String,
    },
}
