//! The ledger: Postgres, the durable authority for everything committed.
//! SKUs with counters, holds with their state, append-only movements. The
//! schema's constraints make `held + sold > on_hand` impossible.

mod apply;
mod checks;
mod dead_letters;
mod direct;
mod gate_source;

pub use apply::{ApplyReport, LostHold};
pub use checks::{LedgerChecks, SkuChecks};
pub use dead_letters::{DeadLetter, Resolution};
pub use direct::{DirectAdmission, DirectTransition};

use crate::domain::{
    HoldId, HoldIdKey, HoldState, Position, SkuFigures, SkuId, SkuSettings, Stock,
};
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("postgres: {0}")]
    Database(sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A write would have taken `held + sold` above `on_hand`
    /// (constraint `skus_no_oversell`): the ledger refused an oversell.
    #[error("the ledger refused an oversell")]
    Oversell,
    /// A write would have moved a hold out of a terminal state
    /// (trigger `holds_state_machine`).
    #[error("the ledger refused a hold state change")]
    HoldStateMachine,
    #[error("ledger invariant broken: {0}")]
    Invariant(String),
}

impl LedgerError {
    /// Maps a database error to the typed error its constraint names.
    fn from_database(error: sqlx::Error) -> Self {
        let constraint = match &error {
            sqlx::Error::Database(e) => e.constraint(),
            _ => None,
        };
        match constraint {
            Some("skus_no_oversell") => Self::Oversell,
            Some("holds_state_machine") => Self::HoldStateMachine,
            _ => Self::Database(error),
        }
    }
}

impl LedgerError {
    /// True when Postgres could not be reached, was shutting down or out of
    /// resources, as opposed to refusing a statement (a bug on our side).
    pub fn is_unavailable(&self) -> bool {
        match self {
            // 08 connection, 53 resources, 57 operator intervention (a
            // statement_timeout cancel included), 55P03 lock_timeout, 25P03
            // idle_in_transaction_session_timeout, 40001/40P01 a transaction
            // to retry (serialization failure, deadlock).
            Self::Database(sqlx::Error::Database(e)) => e.code().is_some_and(|code| {
                ["08", "53", "57"]
                    .iter()
                    .any(|class| code.starts_with(class))
                    || ["55P03", "25P03", "40001", "40P01"].contains(&code.as_ref())
            }),
            Self::Database(
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed,
            )
            | Self::Database(
                sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed,
            ) => true,
            Self::Database(_)
            | Self::Migrate(_)
            | Self::Oversell
            | Self::HoldStateMachine
            | Self::Invariant(_) => false,
        }
    }
}

impl From<sqlx::Error> for LedgerError {
    fn from(error: sqlx::Error) -> Self {
        Self::from_database(error)
    }
}

/// A migration may rewrite or index big tables: its statements get this
/// long, and it waits this long for the migration lock another process
/// holds while it migrates.
const MIGRATION_STATEMENT_TIMEOUT: Duration = Duration::from_secs(600);
const MIGRATION_LOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// The bounds every Postgres session of dropgate sets at connection time, so
/// that no session waits or holds forever:
///
/// * `lock_timeout`: a statement waiting for a row lock (a confirm behind
///   a stalled worker's batch) gives up and the caller answers 503;
/// * `idle_in_transaction_session_timeout`: a session idle inside a
///   transaction (its process stopped, or cut off by the network) is ended
///   by the server, which releases its locks;
/// * `statement_timeout`: no statement runs unbounded.
fn session_options(
    lock: Duration,
    idle_in_transaction: Duration,
    statement: Duration,
) -> [(&'static str, String); 3] {
    let ms = |d: Duration| format!("{}", d.as_millis().max(1));
    [
        ("lock_timeout", ms(lock)),
        (
            "idle_in_transaction_session_timeout",
            ms(idle_in_transaction),
        ),
        ("statement_timeout", ms(statement)),
    ]
}

/// Creates the database if it does not exist, then applies migrations.
/// `timeout` is the store timeout: the migration session's idle-in-
/// transaction bound.
pub async fn migrate(database_url: &str, timeout: Duration) -> Result<(), LedgerError> {
    if !Postgres::database_exists(database_url).await?
        && let Err(error) = Postgres::create_database(database_url).await
    {
        // Another process may have created it a moment ago.
        if !Postgres::database_exists(database_url).await? {
            return Err(error.into());
        }
    }
    let options = PgConnectOptions::from_str(database_url)?
        .application_name("dropgate migrate")
        .options(session_options(
            MIGRATION_LOCK_TIMEOUT,
            timeout,
            MIGRATION_STATEMENT_TIMEOUT,
        ));
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    pool.close().await;
    Ok(())
}

/// A hold as the ledger has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerHold {
    pub sku: SkuId,
    pub customer_id: String,
    pub quantity: i64,
    pub state: HoldState,
    pub extensions: i64,
    pub expires_at: time::OffsetDateTime,
}

/// A SKU row of the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerSku {
    pub sku: SkuId,
    pub sku_no: u32,
    pub figures: SkuFigures,
    /// The stream position of the last event applied.
    pub applied: Position,
}

/// The columns of `skus` every read of a SKU selects, as a literal so each
/// query that uses it stays one static string (`concat!`).
macro_rules! sku_columns {
    () => {
        "sku, sku_no, on_hand, held, sold, per_customer_limit, hold_ttl_ms, \
         max_extensions, epoch, applied_seq"
    };
}
use sku_columns;

/// A `skus` row as Postgres types it; [`LedgerSku`] is what the rest sees.
#[derive(sqlx::FromRow)]
struct SkuRow {
    sku: String,
    sku_no: i32,
    on_hand: i64,
    held: i64,
    sold: i64,
    per_customer_limit: i32,
    hold_ttl_ms: i64,
    max_extensions: i32,
    epoch: i64,
    applied_seq: i64,
}

impl TryFrom<SkuRow> for LedgerSku {
    type Error = LedgerError;

    fn try_from(row: SkuRow) -> Result<Self, LedgerError> {
        Ok(Self {
            sku: SkuId::parse(&row.sku).map_err(|e| LedgerError::Invariant(e.to_string()))?,
            sku_no: u32::try_from(row.sku_no)
                .map_err(|_| LedgerError::Invariant(format!("sku_no {}", row.sku_no)))?,
            figures: SkuFigures {
                stock: Stock {
                    on_hand: row.on_hand,
                    held: row.held,
                    sold: row.sold,
                },
                per_customer_limit: i64::from(row.per_customer_limit),
                hold_ttl_ms: row.hold_ttl_ms,
                max_extensions: i64::from(row.max_extensions),
            },
            applied: Position {
                epoch: row.epoch,
                seq: row.applied_seq,
            },
        })
    }
}

/// A `holds` row.
#[derive(sqlx::FromRow)]
struct HoldRow {
    sku: String,
    customer_id: String,
    quantity: i32,
    state: String,
    extensions: i32,
    expires_at: time::OffsetDateTime,
}

impl TryFrom<HoldRow> for LedgerHold {
    type Error = LedgerError;

    fn try_from(row: HoldRow) -> Result<Self, LedgerError> {
        Ok(Self {
            sku: SkuId::parse(&row.sku).map_err(|e| LedgerError::Invariant(e.to_string()))?,
            customer_id: row.customer_id,
            quantity: i64::from(row.quantity),
            state: HoldState::parse(&row.state)
                .ok_or_else(|| LedgerError::Invariant(format!("hold state {:?}", row.state)))?,
            extensions: i64::from(row.extensions),
            expires_at: row.expires_at,
        })
    }
}

#[derive(Clone)]
pub struct Ledger {
    pool: PgPool,
    /// The store timeout: what a caller may wait for the ledger.
    timeout: Duration,
}

impl Ledger {
    /// Connects lazily, so the gate keeps admitting while Postgres is away.
    /// `timeout` is the store timeout: how long a session may wait for a
    /// lock or sit idle inside a transaction. Statements get four times as
    /// long (a worker batch of thousands of events, a gate rebuild, an audit).
    pub fn connect(database_url: &str, timeout: Duration) -> Result<Self, LedgerError> {
        let options = PgConnectOptions::from_str(database_url)?
            .application_name("dropgate")
            .options(session_options(timeout, timeout, timeout * 4));
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(timeout)
            .connect_lazy_with(options);
        Ok(Self { pool, timeout })
    }

    /// The store timeout the ledger was connected with.
    pub fn store_timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `work` while holding the cluster-wide rebuild lock (a Postgres
    /// advisory lock), so only one process rebuilds the gate at a time.
    pub async fn with_rebuild_lock<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: std::future::Future<Output = Result<T, E>>,
        E: From<LedgerError>,
    {
        /// "dropgate" in ASCII.
        const REBUILD_LOCK: i64 = 0x6472_6f70_6761_7465;
        let mut lock = self.pool.acquire().await.map_err(LedgerError::from)?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(REBUILD_LOCK)
            .execute(&mut *lock)
            .await
            .map_err(LedgerError::from)?;
        let result = work.await;
        if let Err(error) = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(REBUILD_LOCK)
            .execute(&mut *lock)
            .await
        {
            // Closing the session releases the lock too.
            tracing::warn!(%error, "could not release the rebuild lock; closing its session");
            lock.detach();
        }
        result
    }

    pub async fn ping(&self) -> Result<(), LedgerError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// This ledger's identity, created by the migrations.
    pub async fn ledger_id(&self) -> Result<Uuid, LedgerError> {
        Ok(sqlx::query_scalar("SELECT ledger_id FROM ledger_identity")
            .fetch_one(&self.pool)
            .await?)
    }

    /// The key that signs this ledger's hold ids, created by the migrations.
    pub async fn hold_id_key(&self) -> Result<HoldIdKey, LedgerError> {
        let secret: Vec<u8> = sqlx::query_scalar("SELECT hold_id_key FROM ledger_identity")
            .fetch_one(&self.pool)
            .await?;
        Ok(HoldIdKey::new(&secret))
    }

    /// Takes the next block of hold id serials; no other process gets it.
    pub async fn take_hold_id_block(&self) -> Result<u64, LedgerError> {
        let block: i64 = sqlx::query_scalar("SELECT nextval('hold_id_blocks')")
            .fetch_one(&self.pool)
            .await?;
        u64::try_from(block).map_err(|_| LedgerError::Invariant(format!("hold id block {block}")))
    }

    /// The newest gate epoch the ledger knows of.
    pub async fn epoch(&self) -> Result<i64, LedgerError> {
        Ok(sqlx::query_scalar("SELECT max(epoch) FROM gate_epochs")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Makes sure the SKU has a row (and so a number); settings and stock
    /// arrive through its events.
    pub async fn ensure_sku(
        &self,
        sku: &SkuId,
        settings: &SkuSettings,
    ) -> Result<u32, LedgerError> {
        sqlx::query(
            "INSERT INTO skus (sku, per_customer_limit, hold_ttl_ms, max_extensions)
             VALUES ($1, $2, $3, $4) ON CONFLICT (sku) DO NOTHING",
        )
        .bind(sku.as_str())
        .bind(i32::try_from(settings.per_customer_limit).unwrap_or(i32::MAX))
        .bind(settings.hold_ttl_ms)
        .bind(i32::try_from(settings.max_extensions).unwrap_or(0))
        .execute(&self.pool)
        .await?;
        let sku_no: i32 = sqlx::query_scalar("SELECT sku_no FROM skus WHERE sku = $1")
            .bind(sku.as_str())
            .fetch_one(&self.pool)
            .await?;
        u32::try_from(sku_no).map_err(|_| LedgerError::Invariant(format!("sku_no {sku_no}")))
    }

    pub async fn sku(&self, sku: &SkuId) -> Result<Option<LedgerSku>, LedgerError> {
        sqlx::query_as::<_, SkuRow>(concat!(
            "SELECT ",
            sku_columns!(),
            " FROM skus WHERE sku = $1"
        ))
        .bind(sku.as_str())
        .fetch_optional(&self.pool)
        .await?
        .map(LedgerSku::try_from)
        .transpose()
    }

    /// The SKUs of `skus` the ledger has, in one query.
    pub async fn skus_named(
        &self,
        skus: &[SkuId],
    ) -> Result<HashMap<SkuId, LedgerSku>, LedgerError> {
        let names: Vec<&str> = skus.iter().map(SkuId::as_str).collect();
        sqlx::query_as::<_, SkuRow>(concat!(
            "SELECT ",
            sku_columns!(),
            " FROM skus WHERE sku = ANY($1)"
        ))
        .bind(&names)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|row| LedgerSku::try_from(row).map(|sku| (sku.sku.clone(), sku)))
        .collect()
    }

    /// One page of SKUs ordered by id, after `after`.
    pub async fn skus(
        &self,
        after: Option<&SkuId>,
        limit: i64,
    ) -> Result<Vec<LedgerSku>, LedgerError> {
        sqlx::query_as::<_, SkuRow>(concat!(
            "SELECT ",
            sku_columns!(),
            " FROM skus WHERE $1::text IS NULL OR sku > $1 ORDER BY sku LIMIT $2"
        ))
        .bind(after.map(SkuId::as_str))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(LedgerSku::try_from)
        .collect()
    }

    /// Holds in the ledger per state (every state, zero included).
    pub async fn holds_by_state(&self) -> Result<Vec<(&'static str, i64)>, LedgerError> {
        let counts: HashMap<String, i64> =
            sqlx::query_as::<_, (String, i64)>("SELECT state, count(*) FROM holds GROUP BY state")
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .collect();
        Ok(["held", "confirmed", "released", "expired", "lost"]
            .into_iter()
            .map(|state| (state, counts.get(state).copied().unwrap_or(0)))
            .collect())
    }

    /// The applied stream position of each SKU the ledger has.
    pub async fn applied_positions(
        &self,
        skus: &[SkuId],
    ) -> Result<HashMap<SkuId, Position>, LedgerError> {
        let names: Vec<&str> = skus.iter().map(SkuId::as_str).collect();
        let rows: Vec<(String, i64, i64)> =
            sqlx::query_as("SELECT sku, epoch, applied_seq FROM skus WHERE sku = ANY($1)")
                .bind(&names)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(sku, epoch, seq)| {
                Some((SkuId::parse(&sku).ok()?, Position { epoch, seq }))
            })
            .collect())
    }

    pub async fn hold(&self, hold_id: HoldId) -> Result<Option<LedgerHold>, LedgerError> {
        sqlx::query_as::<_, HoldRow>(
            "SELECT sku, customer_id, quantity, state, extensions, expires_at FROM holds WHERE hold_id = $1",
        )
        .bind(hold_id.uuid())
        .fetch_optional(&self.pool)
        .await?
        .map(LedgerHold::try_from)
        .transpose()
    }
}
