//! Stock figures and the kinds of movement that change them.

/// A SKU's units: the three counters every store keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stock {
    pub on_hand: i64,
    pub held: i64,
    pub sold: i64,
}

impl Stock {
    /// Units a new hold may still take.
    pub fn available(self) -> i64 {
        self.on_hand - self.held - self.sold
    }

    /// True when the counters obey `held + sold <= on_hand`, none negative.
    pub fn is_consistent(self) -> bool {
        self.held >= 0 && self.sold >= 0 && self.held + self.sold <= self.on_hand
    }

    /// `self - other`, counter by counter: how far one store is from the
    /// other. Zero everywhere when they agree.
    pub fn drift(self, other: Stock) -> Stock {
        Stock {
            on_hand: self.on_hand - other.on_hand,
            held: self.held - other.held,
            sold: self.sold - other.sold,
        }
    }

    pub fn is_zero(self) -> bool {
        self == Stock::default()
    }
}

/// A SKU's stock together with its settings, as either store has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkuFigures {
    pub stock: Stock,
    /// 0 means no limit.
    pub per_customer_limit: i64,
    pub hold_ttl_ms: i64,
    pub max_extensions: i64,
}

/// The kind of one ledger movement (one event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MovementKind {
    Admit,
    Confirm,
    Release,
    Expire,
    Extend,
    Lost,
    Adjustment,
    Reconcile,
}

impl MovementKind {
    pub const ALL: [MovementKind; 8] = [
        Self::Admit,
        Self::Confirm,
        Self::Release,
        Self::Expire,
        Self::Extend,
        Self::Lost,
        Self::Adjustment,
        Self::Reconcile,
    ];

    /// The name the ledger, the event stream and the API use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admit => "admit",
            Self::Confirm => "confirm",
            Self::Release => "release",
            Self::Expire => "expire",
            Self::Extend => "extend",
            Self::Lost => "lost",
            Self::Adjustment => "adjustment",
            Self::Reconcile => "reconcile",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == value)
    }

    /// The movement that settles a hold into `state`; `None` for `held`.
    pub fn settling(state: super::HoldState) -> Option<Self> {
        use super::HoldState;
        Some(match state {
            HoldState::Confirmed => Self::Confirm,
            HoldState::Released => Self::Release,
            HoldState::Expired => Self::Expire,
            HoldState::Lost => Self::Lost,
            HoldState::Held => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_is_counter_by_counter() {
        let gate = Stock {
            on_hand: 10,
            held: 3,
            sold: 2,
        };
        let ledger = Stock {
            on_hand: 10,
            held: 1,
            sold: 2,
        };
        assert_eq!(gate.available(), 5);
        assert_eq!(
            gate.drift(ledger),
            Stock {
                on_hand: 0,
                held: 2,
                sold: 0
            }
        );
        assert!(gate.drift(gate).is_zero());
        assert!(
            !Stock {
                on_hand: 1,
                held: 1,
                sold: 1
            }
            .is_consistent()
        );
    }

    #[test]
    fn movement_kinds_round_trip() {
        for kind in MovementKind::ALL {
            assert_eq!(MovementKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(MovementKind::parse("adjust"), None);
    }
}
