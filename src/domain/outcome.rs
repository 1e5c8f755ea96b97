//! What the gate (or Postgres, for the Postgres-direct peer) decided, as
//! values the service layer maps to answers.

use super::HoldId;

/// What an admission decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Held {
        hold_id: HoldId,
        expires_at_ms: i64,
    },
    /// The idempotency key was seen with the same body: its first outcome.
    Replayed(Box<Admission>),
    /// The idempotency key was seen with another body.
    KeyReused,
    SoldOut {
        /// When a live hold may next free units; `None` when nothing is held.
        retry_after_ms: Option<i64>,
    },
    LimitExceeded {
        limit: i64,
        already: i64,
    },
    UnknownSku,
    /// The SKU's event stream is full: the ledger is far behind.
    Backlogged,
}

impl Admission {
    /// A sold-out answer from a script's `retry_after_ms` (0: nothing held).
    pub fn sold_out(retry_after_ms: i64) -> Self {
        Self::SoldOut {
            retry_after_ms: (retry_after_ms > 0).then_some(retry_after_ms),
        }
    }

    /// The hold this outcome gave, first time or replayed.
    pub fn held(&self) -> Option<(HoldId, i64)> {
        match self {
            Self::Held {
                hold_id,
                expires_at_ms,
            } => Some((*hold_id, *expires_at_ms)),
            Self::Replayed(first) => first.held(),
            _ => None,
        }
    }
}

/// An operation on a held hold, as a client or a background service asks
/// for it. Each moves the hold along the state machine of DESIGN.md, or (for
/// `Extend`) keeps it `held` with a later expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldTransition {
    Confirm,
    Release,
    Extend,
    Expire,
    /// The ledger refused the hold's admission (after a gate data loss).
    Lose,
}

impl HoldTransition {
    /// The state the hold ends in when the transition succeeds.
    pub fn target(self) -> super::HoldState {
        use super::HoldState;
        match self {
            Self::Confirm => HoldState::Confirmed,
            Self::Release => HoldState::Released,
            Self::Extend => HoldState::Held,
            Self::Expire => HoldState::Expired,
            Self::Lose => HoldState::Lost,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirm => "confirm",
            Self::Release => "release",
            Self::Extend => "extend",
            Self::Expire => "expire",
            Self::Lose => "lose",
        }
    }
}
