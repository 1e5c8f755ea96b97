//! The gate: Redis, the admission authority on the hot path. Every change of
//! stock or of a hold is decided here by one Lua script, which also appends
//! the event the ledger will record.
//!
//! One module per script, like the commands of mini-redis: each holds a
//! typed request that builds the script's KEYS and ARGV, and the typed reply
//! read from the script's named fields ([`Script`]). [`Gate`] runs them and
//! keeps the small plain reads; nothing outside this module names a key or
//! touches the connection.
//!
//! * [`admit`](Admit): admitting a hold.
//! * [`settle`](Settle), [`extend`](Extend): a client's hold operations.
//! * [`expire`](Expire): the reaper's step.
//! * [`set_sku`](SetSku): creating a SKU, `PUT`, adjustments.
//! * [`snapshot`](TakeSnapshot), [`repair`](Repair): the reconciler's fence.
//! * [`lose`](Lose): a hold the ledger refused.
//! * [`trim`](Trim): dropping acknowledged stream entries.
//! * `stream`: stream ranges, backlogs and the commit worker's [`Consumer`].
//! * `activity`: hints of which SKUs have new events or holds falling due,
//!   so the background services leave idle SKUs alone.
//! * `rebuild`: closing a SKU and writing it anew from the ledger.

mod activity;
mod admit;
mod admit_batch;
mod batcher;
mod connection;
mod expire;
mod extend;
mod keys;
mod lose;
mod rebuild;
mod repair;
mod reply;
mod script;
mod set_sku;
mod settle;
mod snapshot;
mod sold_out;
mod stream;
mod trim;

pub use activity::{Activity, ActivityCursor, PUBLISH_INTERVAL};
pub use admit::{Admit, AdmitReply};
pub use admit_batch::AdmitBatch;
pub use batcher::DEFAULT_ADMIT_BATCH_MAX;
pub use connection::{GateConnection, Trouble};
pub use expire::{Expire, Expired};
pub use extend::Extend;
pub use lose::Lose;
pub use repair::Repair;
pub use reply::GateHold;
pub use script::{Fenced, Script};
pub use set_sku::{SetSku, SkuChange, StockChange};
pub use settle::{Settle, Settlement, Transition};
pub use snapshot::{Snapshot, TakeSnapshot};
pub use sold_out::SoldOutCache;
pub use stream::{Consumer, Deliveries, Delivery};
pub use trim::{Trim, Trimmed};

use crate::domain::{Admission, HoldId, HoldState, HoldTransition, SkuFigures, SkuId, Stock};
use keys::Keys;
use redis::AsyncCommands;
use redis::aio::ConnectionManagerConfig;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Consumer group of the commit worker on every SKU stream.
pub const CONSUMER_GROUP: &str = "ledger";

/// Admission stops (503) while a SKU's stream holds this many uncommitted
/// events: a bound on Redis memory if the ledger is gone for long.
pub const MAX_EVENT_BACKLOG: i64 = 2_000_000;

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    /// A rebuild was asked of a SKU that was not closed first.
    #[error("SKU {0} is open: close it before rebuilding it")]
    NotClosed(SkuId),
    /// The batch call this admission was part of failed.
    #[error("admission batch: {0}")]
    Batch(Arc<GateError>),
    /// The batch call that carried this admission never answered (its task
    /// failed): whether it was decided is unknown.
    #[error("the call carrying this admission was abandoned")]
    Abandoned,
    /// Too many admissions wait for one SKU.
    #[error("too many admissions waiting for one SKU")]
    Overloaded,
}

impl GateError {
    /// True when Redis could not be reached, did not answer in time, or
    /// answered that it cannot serve now (`Trouble`: out of memory,
    /// read-only, loading, …), as opposed to answering with an error (a bug
    /// on our side).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Redis(e) => {
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || Trouble::of(e).is_some()
            }
            Self::Batch(e) => e.is_unavailable(),
            Self::Abandoned | Self::Overloaded => true,
            Self::Protocol(_) | Self::NotClosed(_) => false,
        }
    }

    /// The reply with which a reachable Redis refused to serve, if that is
    /// what this error is.
    pub fn trouble(&self) -> Option<Trouble> {
        match self {
            Self::Redis(e) => Trouble::of(e),
            Self::Batch(e) => e.trouble(),
            Self::Protocol(_) | Self::NotClosed(_) | Self::Abandoned | Self::Overloaded => None,
        }
    }

    fn protocol(message: impl Into<String>) -> Self {
        Self::Protocol(message.into())
    }
}

#[derive(Clone)]
pub struct Gate {
    /// One multiplexed, auto-pipelined connection for every request, chosen by
    /// measuring (`cargo bench --bench redis_connections`, 64 concurrent
    /// admit.lua calls on 2 cores): 22.3k calls/s vs 12.7k for a
    /// deadpool-redis pool of 32 (1.76x), p99 6.5 ms vs 11.1 ms. Concurrent
    /// scripts share one socket's writes and reads, so each admission is one
    /// round trip; a pool checkout adds UNWATCH/PING round trips and queueing.
    /// Reopened when Redis answers READONLY, to follow a failover.
    conn: GateConnection,
    /// Opens the connections that must not share `conn` (blocking reads).
    client: redis::Client,
    timeout: Duration,
    /// Starts every key of this deployment (see `keys`).
    prefix: Arc<str>,
    /// SKU number → id. Immutable once assigned, so cached forever.
    sku_names: Arc<RwLock<HashMap<u32, SkuId>>>,
    /// What the scripts run here left for the background services, until
    /// published (see `activity`).
    activity: Arc<activity::ActivityLog>,
    /// SKUs this gatekeeper knows sold out (see `sold_out`); off unless
    /// [`with_sold_out_cache`](Gate::with_sold_out_cache).
    sold_out: Arc<SoldOutCache>,
    /// Admissions queued per SKU behind the call in flight (see `batcher`).
    batcher: Arc<batcher::Batcher>,
}

fn connection_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(200))
}

impl Gate {
    /// Connects lazily: the first command connects, so a server can start
    /// (and report not ready) while Redis is down.
    pub fn connect(redis_url: &str, prefix: &str, timeout: Duration) -> Result<Self, GateError> {
        let client = redis::Client::open(redis_url)?;
        let conn = GateConnection::new(client.clone(), connection_config(timeout))?;
        Ok(Self {
            conn,
            client,
            timeout,
            prefix: prefix.into(),
            sku_names: Arc::default(),
            activity: Arc::default(),
            sold_out: Arc::default(),
            batcher: Arc::default(),
        })
    }

    /// Admissions per script call at most (see `batcher`); 1 turns
    /// batching off.
    pub fn with_admit_batch_max(mut self, max: usize) -> Self {
        self.batcher = Arc::new(batcher::Batcher::new(max));
        self
    }

    /// Answers `sold_out` for a SKU the gate said has 0 available, for at
    /// most `max_age` (zero: never) or until its units come back; needs
    /// [`follow_units_back_until`](Gate::follow_units_back_until) running.
    pub fn with_sold_out_cache(mut self, max_age: Duration) -> Self {
        self.sold_out = Arc::new(SoldOutCache::new(max_age));
        self
    }

    fn keys(&self) -> Keys<'_> {
        Keys::new(&self.prefix)
    }

    /// Runs one script request and reads its reply, noting what it left
    /// for the background services.
    async fn run<S: Script>(&self, request: &S) -> Result<S::Reply, GateError> {
        let started = Instant::now();
        let reply: redis::Value = request
            .invocation(&self.prefix)
            .invoke_async(&mut self.conn.clone())
            .await?;
        // Round trip included.
        metrics::histogram!(crate::telemetry::metric::REDIS_SCRIPT_DURATION_SECONDS, "script" => request.name())
            .record(started.elapsed().as_secs_f64());
        let reply = request.decode(reply)?;
        if let Some(activity) = request.activity(&reply) {
            self.activity.record(activity);
        }
        Ok(reply)
    }

    /// Redis's clock in unix ms: the one clock every time-based decision
    /// reads (DESIGN.md "One clock"), so gatekeepers whose own clocks
    /// disagree decide as one.
    pub async fn time_ms(&self) -> Result<i64, GateError> {
        let mut conn = self.conn.clone();
        let (seconds, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await?;
        Ok(seconds * 1000 + micros / 1000)
    }

    pub async fn ping(&self) -> Result<(), GateError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    // ---- the scripts ----

    /// Admits with the script, or answers `sold_out` (or the key's replay)
    /// at the edge for a SKU known to have 0 available (see `sold_out`).
    pub async fn admit(&self, request: &Admit) -> Result<Fenced<Admission>, GateError> {
        if let Some(answer) = self
            .admit_at_edge(&request.sku, request.key.as_str(), &request.fingerprint)
            .await?
        {
            return Ok(Fenced::Open(answer));
        }
        let generation = self.sold_out.generation();
        Ok(match self.admit_batched(request).await? {
            Fenced::Open(admitted) => {
                if let (Admission::SoldOut { retry_after_ms }, true) =
                    (&admitted.admission, admitted.none_left)
                {
                    self.sold_out
                        .flag(&request.sku, *retry_after_ms, generation);
                }
                Fenced::Open(admitted.admission)
            }
            Fenced::Closed => Fenced::Closed,
        })
    }

    /// Runs one batch of admissions as it is (see `batcher` for how
    /// [`admit`](Gate::admit) forms them).
    pub async fn admit_batch(
        &self,
        request: &AdmitBatch,
    ) -> Result<Vec<Fenced<AdmitReply>>, GateError> {
        self.run(request).await
    }

    pub async fn settle(&self, request: &Settle) -> Result<Fenced<Transition>, GateError> {
        // A release brings units back; a confirm changes what Retry-After
        // may promise. Either way this gatekeeper's flag goes.
        let reply = self.run(request).await;
        self.sold_out.units_back(&request.sku);
        reply
    }

    /// Extends a hold (or expires it, when it is past due).
    pub async fn extend(&self, request: &Extend) -> Result<Fenced<Transition>, GateError> {
        let reply = self.run(request).await;
        self.sold_out.units_back(&request.sku);
        reply
    }

    /// Runs a client's hold operation (confirm, release or extend).
    pub async fn transition(
        &self,
        sku: &SkuId,
        hold_id: HoldId,
        operation: HoldTransition,
    ) -> Result<Fenced<Transition>, GateError> {
        let settle = |to| Settle::new(sku.clone(), hold_id, to);
        match operation {
            HoldTransition::Confirm => self.settle(&settle(Settlement::Confirm)).await,
            HoldTransition::Release => self.settle(&settle(Settlement::Release)).await,
            HoldTransition::Extend => self.extend(&Extend::new(sku.clone(), hold_id)).await,
            HoldTransition::Expire | HoldTransition::Lose => Err(GateError::protocol(format!(
                "{} is not a client operation",
                operation.as_str()
            ))),
        }
    }

    pub async fn expire(&self, request: &Expire) -> Result<Fenced<Expired>, GateError> {
        let reply = self.run(request).await;
        self.sold_out.units_back(&request.sku);
        reply
    }

    pub async fn set_sku(&self, request: &SetSku) -> Result<Fenced<SkuChange>, GateError> {
        let reply = self.run(request).await;
        self.sold_out.units_back(&request.sku);
        reply
    }

    /// A SKU's counters and stream position, read atomically; `None` when
    /// the gate does not have the SKU (or has it closed).
    pub async fn snapshot(&self, sku: &SkuId) -> Result<Option<Snapshot>, GateError> {
        self.run(&TakeSnapshot { sku: sku.clone() }).await
    }

    /// Sets the SKU's counters to `stock` if nothing happened since
    /// `snapshot`; `Open(true)` when it did.
    pub async fn repair(
        &self,
        sku: &SkuId,
        snapshot: &Snapshot,
        stock: Stock,
    ) -> Result<Fenced<bool>, GateError> {
        let reply = self
            .run(&Repair {
                sku: sku.clone(),
                snapshot: *snapshot,
                stock,
            })
            .await;
        self.sold_out.units_back(sku);
        reply
    }

    /// Marks a hold the ledger refused as lost; returns its former state
    /// (`None`: the gate does not have it).
    pub async fn lose(
        &self,
        sku: &SkuId,
        hold_id: HoldId,
    ) -> Result<Fenced<Option<HoldState>>, GateError> {
        let reply = self
            .run(&Lose {
                sku: sku.clone(),
                hold_id,
            })
            .await;
        self.sold_out.units_back(sku);
        reply
    }

    /// Drops acknowledged entries from a SKU's stream; says how many, and
    /// how many are left.
    pub async fn trim_events(&self, sku: &SkuId) -> Result<Trimmed, GateError> {
        self.run(&Trim { sku: sku.clone() }).await
    }

    // ---- plain reads and writes ----

    /// A SKU's figures; `None` when the gate does not have it (or has it
    /// closed for a rebuild).
    pub async fn sku(&self, sku: &SkuId) -> Result<Option<SkuFigures>, GateError> {
        let values: Vec<Option<i64>> = self
            .conn
            .clone()
            .hmget(
                self.keys().stock(sku),
                &["on_hand", "held", "sold", "limit", "ttl_ms", "max_ext"],
            )
            .await?;
        Ok(match values.as_slice() {
            [
                Some(on_hand),
                Some(held),
                Some(sold),
                Some(limit),
                Some(ttl),
                Some(max_ext),
            ] => Some(SkuFigures {
                stock: Stock {
                    on_hand: *on_hand,
                    held: *held,
                    sold: *sold,
                },
                per_customer_limit: *limit,
                hold_ttl_ms: *ttl,
                max_extensions: *max_ext,
            }),
            _ => None,
        })
    }

    /// The SKU's ledger number as the gate recorded it.
    pub async fn sku_number(&self, sku: &SkuId) -> Result<Option<u32>, GateError> {
        Ok(self
            .conn
            .clone()
            .hget(self.keys().stock(sku), "sku_no")
            .await?)
    }

    pub async fn hold(&self, sku: &SkuId, hold_id: HoldId) -> Result<Option<GateHold>, GateError> {
        let values: Vec<Option<String>> = self
            .conn
            .clone()
            .hmget(self.keys().hold(sku, hold_id), &GateHold::HASH_FIELDS)
            .await?;
        GateHold::from_hash(&values)
    }

    /// Holds in the SKU's expiry index: the gate's live holds.
    pub async fn live_holds(&self, sku: &SkuId) -> Result<i64, GateError> {
        Ok(self.conn.clone().zcard(self.keys().expiry(sku)).await?)
    }

    /// Records a SKU's number so hold ids resolve to it.
    pub async fn register_sku(&self, sku_no: u32, sku: &SkuId) -> Result<(), GateError> {
        let () = self
            .conn
            .clone()
            .hset(self.keys().registry(), sku_no, sku.as_str())
            .await?;
        self.remember(sku_no, sku.clone());
        Ok(())
    }

    fn remember(&self, sku_no: u32, sku: SkuId) {
        if let Ok(mut names) = self.sku_names.write() {
            names.insert(sku_no, sku);
        }
    }

    /// The SKU that owns a hold id, if the gate knows it.
    pub async fn sku_of(&self, hold_id: HoldId) -> Result<Option<SkuId>, GateError> {
        let sku_no = hold_id.sku_no();
        if let Some(sku) = self
            .sku_names
            .read()
            .ok()
            .and_then(|n| n.get(&sku_no).cloned())
        {
            return Ok(Some(sku));
        }
        let name: Option<String> = self
            .conn
            .clone()
            .hget(self.keys().registry(), sku_no)
            .await?;
        let sku = name.and_then(|n| SkuId::parse(&n).ok());
        if let Some(sku) = &sku {
            self.remember(sku_no, sku.clone());
        }
        Ok(sku)
    }

    /// Every SKU the gate knows, sorted by id.
    pub async fn skus(&self) -> Result<Vec<SkuId>, GateError> {
        let names: HashMap<u32, String> = self.conn.clone().hgetall(self.keys().registry()).await?;
        let mut skus: Vec<SkuId> = names
            .into_iter()
            .filter_map(|(no, name)| {
                let sku = SkuId::parse(&name).ok()?;
                self.remember(no, sku.clone());
                Some(sku)
            })
            .collect();
        skus.sort();
        Ok(skus)
    }

    /// The gate epoch, or `None` when the gate is not built (fresh or lost).
    pub async fn epoch(&self) -> Result<Option<i64>, GateError> {
        Ok(self.conn.clone().get(self.keys().gate()).await?)
    }

    /// The ledger the gate was built from, as recorded by [`Gate::set_built`].
    pub async fn built_from(&self) -> Result<Option<uuid::Uuid>, GateError> {
        let id: Option<String> = self.conn.clone().get(self.keys().gate_ledger()).await?;
        Ok(id.and_then(|id| uuid::Uuid::try_parse(&id).ok()))
    }

    /// Marks the gate built at `epoch` from the ledger `ledger_id`. The
    /// epoch key goes last: it is what says "built".
    pub async fn set_built(&self, epoch: i64, ledger_id: uuid::Uuid) -> Result<(), GateError> {
        let k = self.keys();
        let () = redis::pipe()
            .atomic()
            .set(k.gate_ledger(), ledger_id.to_string())
            .ignore()
            .set(k.gate(), epoch)
            .ignore()
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Deletes the gate epoch key: the gate counts as lost and is rebuilt.
    pub async fn forget_epoch(&self) -> Result<(), GateError> {
        let () = self.conn.clone().del(self.keys().gate()).await?;
        Ok(())
    }

    /// Redis WAIT on the shared connection: blocks until `replicas` replicas
    /// have every write sent so far (ours and everyone's before it), or
    /// `timeout_ms`. Returns how many acknowledged.
    pub async fn wait_for_replicas(
        &self,
        replicas: u32,
        timeout_ms: u64,
    ) -> Result<u32, GateError> {
        Ok(redis::cmd("WAIT")
            .arg(replicas)
            .arg(timeout_ms)
            .query_async(&mut self.conn.clone())
            .await?)
    }
}
