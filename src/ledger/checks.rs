//! The ledger's side of `dropgate audit`: figures that must agree with each
//! other (counters, the sum of movements, the holds) and with the gate.

use super::{Ledger, LedgerError};
use crate::domain::{SkuId, Stock};

/// Breaches of the ledger as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerChecks {
    /// Movements sharing an event id (the primary key makes this 0).
    pub duplicate_events: i64,
    /// Holds with more than one settling movement that moved units.
    pub double_settled: i64,
}

/// One SKU's figures three ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkuChecks {
    /// The counters of the `skus` row.
    pub counters: Stock,
    /// The sums of the SKU's movements.
    pub movements: Stock,
    /// Units of `held` and `confirmed` holds (`on_hand` is the counter's).
    pub holds: Stock,
    /// Holds in state `held`.
    pub live_holds: i64,
}

#[derive(sqlx::FromRow)]
struct SkuChecksRow {
    on_hand: i64,
    held: i64,
    sold: i64,
    m_on_hand: i64,
    m_held: i64,
    m_sold: i64,
    h_held: i64,
    h_sold: i64,
    live: i64,
}

impl Ledger {
    pub async fn checks(&self) -> Result<LedgerChecks, LedgerError> {
        let duplicate_events: i64 =
            sqlx::query_scalar("SELECT count(*) - count(DISTINCT event_id) FROM movements")
                .fetch_one(&self.pool)
                .await?;
        let double_settled: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT hold_id FROM movements
               WHERE kind IN ('confirm', 'release', 'expire') AND held_delta <> 0
               GROUP BY hold_id HAVING count(*) > 1) twice",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(LedgerChecks {
            duplicate_events,
            double_settled,
        })
    }

    pub async fn sku_checks(&self, sku: &SkuId) -> Result<Option<SkuChecks>, LedgerError> {
        let row = sqlx::query_as::<_, SkuChecksRow>(
            "SELECT s.on_hand, s.held, s.sold,
                    coalesce(sum(m.quantity_delta), 0)::int8 AS m_on_hand,
                    coalesce(sum(m.held_delta), 0)::int8 AS m_held,
                    coalesce(sum(m.sold_delta), 0)::int8 AS m_sold,
                    (SELECT coalesce(sum(quantity), 0)::int8 FROM holds h WHERE h.sku = s.sku AND h.state = 'held') AS h_held,
                    (SELECT coalesce(sum(quantity), 0)::int8 FROM holds h WHERE h.sku = s.sku AND h.state = 'confirmed') AS h_sold,
                    (SELECT count(*) FROM holds h WHERE h.sku = s.sku AND h.state = 'held') AS live
             FROM skus s LEFT JOIN movements m ON m.sku = s.sku
             WHERE s.sku = $1 GROUP BY s.sku",
        )
        .bind(sku.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| SkuChecks {
            counters: Stock {
                on_hand: r.on_hand,
                held: r.held,
                sold: r.sold,
            },
            movements: Stock {
                on_hand: r.m_on_hand,
                held: r.m_held,
                sold: r.m_sold,
            },
            holds: Stock {
                on_hand: r.on_hand,
                held: r.h_held,
                sold: r.h_sold,
            },
            live_holds: r.live,
        }))
    }
}
