//! Direct tests of the Lua scripts in `lua/`, one SKU at a time: each test
//! runs the scripts through the gate's typed requests (`dropgate::gate`)
//! under a fresh key prefix in the real Redis, and checks the typed reply and
//! every key the script touched, read back on a connection of its own, with
//! exact numbers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use dropgate::domain::{
    Admission, AdmittedKey, CustomerId, HoldId, HoldIdKey, HoldState, IDEMPOTENCY_TTL_MS,
    IdempotencyKey, LiveHold, Position, Quantity, SkuFigures, SkuId, SkuSettings, SkuSnapshot,
    Stock,
};
use dropgate::gate::{
    Admit, AdmitBatch, AdmitReply, CONSUMER_GROUP, Expire, Expired, Extend, Fenced, Gate,
    GateError, GateHold, SetSku, Settle, Settlement, SkuChange, StockChange, Transition,
};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamInfoGroupsReply;
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

const REDIS_URL: &str = "redis://127.0.0.1:6379/0";
const GROUP: &str = CONSUMER_GROUP;
const EPOCH: i64 = 7;
const SKU_NO: u32 = 42;
const TTL: i64 = 60_000;
const IDEM_TTL: i64 = IDEMPOTENCY_TTL_MS;
/// hold_lib.lua's SETTLED_HOLD_TTL_MS.
const SETTLED_TTL: i64 = 3_600_000;
const NO_BACKLOG_LIMIT: i64 = 1_000_000;

/// `fields! {"t" => "admit", "q" => 1}`: a hash or stream entry as text.
macro_rules! fields {
    ($($k:literal => $v:expr_2021),* $(,)?) => {
        BTreeMap::from([$(($k.to_owned(), $v.to_string())),*])
    };
}

type Fields = BTreeMap<String, String>;

fn fresh_id() -> String {
    Uuid::new_v4().to_string()
}

/// A fresh hold id of SKU `SKU_NO` (the scripts read nothing in it).
fn hold_id() -> HoldId {
    static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let one = Quantity::parse(1).unwrap();
    HoldId::issue(&HoldIdKey::new(b"scripts"), serial, SKU_NO, one)
}

fn customer(id: &str) -> CustomerId {
    CustomerId::parse(id).unwrap()
}

fn key(key: &str) -> IdempotencyKey {
    IdempotencyKey::parse(key).unwrap()
}

fn stream_id(seq: i64) -> String {
    format!("{EPOCH}-{seq}")
}

fn position(seq: i64) -> Position {
    Position { epoch: EPOCH, seq }
}

fn settings(on_hand: i64, limit: i64, ttl_ms: i64, max_ext: i64) -> SkuSettings {
    SkuSettings {
        on_hand,
        per_customer_limit: limit,
        hold_ttl_ms: ttl_ms,
        max_extensions: max_ext,
    }
}

const SETTINGS: SkuSettings = SkuSettings {
    on_hand: 10,
    per_customer_limit: 0,
    hold_ttl_ms: TTL,
    max_extensions: 2,
};

/// What set_sku.lua replies with for a SKU created or updated.
fn figures(stock: [i64; 3], limit: i64, ttl_ms: i64, max_ext: i64) -> SkuFigures {
    let [on_hand, held, sold] = stock;
    SkuFigures {
        stock: Stock {
            on_hand,
            held,
            sold,
        },
        per_customer_limit: limit,
        hold_ttl_ms: ttl_ms,
        max_extensions: max_ext,
    }
}

/// A client's hold operation, as the transition scripts run it.
#[derive(Debug, Clone, Copy)]
enum Op {
    Confirm,
    Release,
    Extend,
}

/// How a transition that changes nothing answers.
#[derive(Debug, Clone, Copy)]
enum Inert {
    Same,
    Conflict,
}

/// A live hold as admitted, to build the replies of the transition scripts.
#[derive(Debug, Clone)]
struct Held {
    hold: HoldId,
    admit_event: Uuid,
    customer: String,
    qty: i64,
    expires: i64,
    extensions: i64,
    created: i64,
}

impl Held {
    /// The hold as a transition script replies with it, in `state`.
    fn gate_hold(&self, state: HoldState) -> GateHold {
        GateHold {
            state,
            customer_id: self.customer.clone(),
            quantity: self.qty,
            expires_at_ms: self.expires,
            extensions: self.extensions,
            created_ms: self.created,
        }
    }

    fn done(&self, state: HoldState, seq: i64) -> Fenced<Transition> {
        Fenced::Open(Transition::Done {
            hold: self.gate_hold(state),
            position: position(seq),
        })
    }

    fn conflict(&self, state: HoldState, seq: Option<i64>) -> Fenced<Transition> {
        Fenced::Open(Transition::Conflict {
            hold: self.gate_hold(state),
            position: seq.map(position),
        })
    }

    /// The hold hash as the scripts keep it, in `state`.
    fn fields(&self, state: &str) -> Fields {
        fields! {"s" => state, "c" => self.customer, "q" => self.qty, "e" => self.expires,
        "x" => self.extensions, "t" => self.created, "a" => self.admit_event}
    }

    fn with_expiry(&self, expires: i64, extensions: i64) -> Self {
        Self {
            expires,
            extensions,
            ..self.clone()
        }
    }
}

/// One test's corner of Redis: a unique key prefix, a gate on it and one SKU
/// under it. Its keys are deleted by `finish`, or on drop if the test fails
/// first.
struct Lab {
    gate: Gate,
    /// The test's own connection, to read back what the scripts wrote.
    conn: MultiplexedConnection,
    prefix: String,
    base: String,
    sku: SkuId,
    /// Redis's clock when the lab opened. Scripts read Redis's clock (one
    /// clock), so fixtures are placed by it and times are checked against it.
    t0: i64,
    cleaned: bool,
}

impl Lab {
    async fn new() -> Self {
        let client = redis::Client::open(REDIS_URL).expect("redis url");
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis at 127.0.0.1:6379");
        let prefix = format!("lt{}", Uuid::new_v4().simple());
        let gate = Gate::connect(REDIS_URL, &prefix, Duration::from_secs(5)).expect("a gate");
        let base = format!("{prefix}:{{sku-1}}:");
        let t0 = gate.time_ms().await.expect("TIME");
        Self {
            gate,
            conn,
            prefix,
            base,
            sku: SkuId::parse("sku-1").unwrap(),
            t0,
            cleaned: false,
        }
    }

    /// Redis's clock now, unix ms.
    async fn redis_now(&self) -> i64 {
        self.gate.time_ms().await.expect("TIME")
    }

    /// Checks that `ms` is a time Redis's clock read during the test.
    async fn assert_redis_time(&self, ms: i64) {
        let now = self.redis_now().await;
        assert!(
            (self.t0..=now).contains(&ms),
            "{ms} is not Redis's clock during the test ({}..={now})",
            self.t0
        );
    }

    /// Places a hold's expiry at `at` (hold hash and expiry index), as if
    /// Redis's clock had moved: the fixture for anything that falls due.
    async fn place_expiry(&mut self, held: &Held, at: i64) -> Held {
        let hold_key = self.hold_key(held.hold);
        self.hset(&hold_key, &[("e", at)]).await;
        self.zadd(&held.hold.to_string(), at).await;
        held.with_expiry(at, held.extensions)
    }

    /// `<prefix>:{sku-1}:<suffix>`
    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.base)
    }

    fn hold_key(&self, hold: HoldId) -> String {
        self.key(&format!("h:{hold}"))
    }

    // ---- the scripts, through the gate's requests ----

    fn put(&self, settings: SkuSettings) -> SetSku {
        let change = StockChange::Put {
            settings,
            sku_no: SKU_NO,
        };
        SetSku::new(self.sku.clone(), change, "stocktake", EPOCH)
    }

    fn adjust(&self, delta: i64) -> SetSku {
        let change = StockChange::Adjust { delta };
        SetSku::new(self.sku.clone(), change, "stocktake", EPOCH)
    }

    async fn set_sku(&self, request: &SetSku) -> Fenced<SkuChange> {
        self.gate.set_sku(request).await.expect("set_sku runs")
    }

    async fn create(&self, settings: SkuSettings) {
        let created = self.set_sku(&self.put(settings)).await;
        assert!(
            matches!(created, Fenced::Open(SkuChange::Created(_))),
            "{created:?}"
        );
    }

    /// An admission as the service makes it, with fingerprint `fp-1` and
    /// no practical backlog limit.
    fn admit_req(&self, idempotency_key: &str, customer_id: &str, qty: i64) -> Admit {
        Admit {
            fingerprint: "fp-1".to_owned(),
            backlog_limit: NO_BACKLOG_LIMIT,
            ..Admit::new(
                self.sku.clone(),
                hold_id(),
                customer(customer_id),
                Quantity::parse(qty).unwrap(),
                key(idempotency_key),
            )
        }
    }

    async fn admit(&self, request: &Admit) -> Fenced<Admission> {
        self.gate.admit(request).await.expect("admit runs")
    }

    /// Admits a hold (fresh idempotency key) that must be held.
    async fn hold_for(&mut self, customer_id: &str, qty: i64) -> Held {
        let request = self.admit_req(&fresh_id(), customer_id, qty);
        let (created, expires) = self.admit_held(&request).await;
        Held {
            hold: request.hold_id,
            admit_event: request.event_id,
            customer: customer_id.to_owned(),
            qty,
            expires,
            extensions: 0,
            created,
        }
    }

    /// settle.lua (confirm, release) or extend.lua; the reply and the event
    /// id the call was given.
    async fn transition(&self, op: Op, hold: HoldId) -> (Fenced<Transition>, Uuid) {
        let sku = self.sku.clone();
        let (reply, event) = match op {
            Op::Confirm | Op::Release => {
                let to = match op {
                    Op::Confirm => Settlement::Confirm,
                    _ => Settlement::Release,
                };
                let request = Settle::new(sku, hold, to);
                (self.gate.settle(&request).await, request.event_id)
            }
            Op::Extend => {
                let request = Extend::new(sku, hold);
                (self.gate.extend(&request).await, request.event_id)
            }
        };
        (reply.expect("the transition runs"), event)
    }

    /// A transition that must be done now.
    async fn done(&self, op: Op, hold: HoldId) {
        let (reply, _) = self.transition(op, hold).await;
        assert!(
            matches!(reply, Fenced::Open(Transition::Done { .. })),
            "{op:?}: {reply:?}"
        );
    }

    /// An admission that must hold units, created now by Redis's clock and
    /// expiring TTL later; returns when it was created and expires.
    async fn admit_held(&mut self, request: &Admit) -> (i64, i64) {
        let reply = self.admit(request).await;
        let hold_key = self.hold_key(request.hold_id);
        let created: i64 = self.conn.hget(hold_key, "t").await.expect("HGET");
        self.assert_redis_time(created).await;
        let held = Admission::Held {
            hold_id: request.hold_id,
            expires_at_ms: created + TTL,
        };
        assert_eq!(reply, Fenced::Open(held));
        (created, created + TTL)
    }

    /// expire.lua with `batch` event ids; returns the reply and the ids.
    async fn expire(&self, batch: usize) -> (Fenced<Expired>, Vec<Uuid>) {
        let request = Expire::new(self.sku.clone(), batch);
        let reply = self.gate.expire(&request).await.expect("expire runs");
        (reply, request.event_ids)
    }

    /// Entries trimmed, and asserts what is left is the stream's length.
    async fn trim(&mut self) -> u64 {
        let done = self.gate.trim_events(&self.sku).await.expect("trim runs");
        assert_eq!(
            done.left,
            self.xlen().await as u64,
            "left: the stream's length"
        );
        done.trimmed
    }

    // ---- reading and crafting state ----

    /// on_hand, held, sold.
    async fn counters(&mut self) -> [i64; 3] {
        let stock = self.key("stock");
        let values: Vec<i64> = self
            .conn
            .hmget(stock, &["on_hand", "held", "sold"])
            .await
            .expect("HMGET stock");
        values.try_into().expect("three counters")
    }

    async fn hash(&mut self, key: &str) -> Fields {
        self.conn.hgetall(key).await.expect("HGETALL")
    }

    async fn hset(&mut self, key: &str, items: &[(&str, i64)]) {
        let () = self.conn.hset_multiple(key, items).await.expect("HSET");
    }

    async fn get(&mut self, suffix: &str) -> Option<String> {
        let key = self.key(suffix);
        self.conn.get(key).await.expect("GET")
    }

    async fn pttl(&mut self, key: &str) -> i64 {
        self.conn.pttl(key).await.expect("PTTL")
    }

    async fn expiry_score(&mut self, hold: HoldId) -> Option<i64> {
        let key = self.key("expiry");
        self.conn
            .zscore(key, hold.to_string())
            .await
            .expect("ZSCORE")
    }

    async fn zadd(&mut self, member: &str, score: i64) {
        let key = self.key("expiry");
        let _: i64 = self.conn.zadd(key, member, score).await.expect("ZADD");
    }

    /// The stream's entries, each event's time ("m") checked to be Redis's
    /// clock during the test, then left out.
    async fn events(&mut self) -> Vec<(String, Fields)> {
        let key = self.key("events");
        let mut events: Vec<(String, Fields)> = self.conn.xrange_all(key).await.expect("XRANGE");
        for (_, fields) in &mut events {
            let at = fields.remove("m").expect("every event is timed");
            self.assert_redis_time(at.parse().expect("unix ms")).await;
        }
        events
    }

    async fn last_event(&mut self) -> (String, Fields) {
        self.events().await.pop().expect("an event")
    }

    async fn xlen(&mut self) -> usize {
        let key = self.key("events");
        self.conn.xlen(key).await.expect("XLEN")
    }

    async fn event_ids(&mut self) -> Vec<String> {
        self.events().await.into_iter().map(|(id, _)| id).collect()
    }

    /// The commit worker's group on the stream: (name, last delivered, pending).
    async fn groups(&mut self) -> Vec<(String, String, usize)> {
        let events = self.key("events");
        let groups: StreamInfoGroupsReply = self.conn.xinfo_groups(events).await.expect("XINFO");
        groups
            .groups
            .into_iter()
            .map(|g| (g.name, g.last_delivered_id, g.pending))
            .collect()
    }

    async fn keys(&mut self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .conn
            .keys(format!("{}:*", self.prefix))
            .await
            .expect("KEYS");
        keys.sort();
        keys
    }

    /// Every key of the test with its content (TTLs aside), to check that a
    /// call changed nothing, or exactly one thing.
    async fn snapshot(&mut self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for key in self.keys().await {
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut self.conn)
                .await
                .expect("TYPE");
            let content = match kind.as_str() {
                "string" => self.conn.get(&key).await.expect("GET"),
                "hash" => format!("{:?}", self.hash(&key).await),
                "zset" => {
                    let members: Vec<(String, i64)> = self
                        .conn
                        .zrange_withscores(&key, 0, -1)
                        .await
                        .expect("ZRANGE");
                    format!("{members:?}")
                }
                "stream" => {
                    let entries: Vec<(String, Fields)> =
                        self.conn.xrange_all(&key).await.expect("XRANGE");
                    format!("{entries:?}")
                }
                other => other.to_owned(),
            };
            out.insert(key, content);
        }
        out
    }

    /// Deletes the test's keys and checks none is left.
    async fn finish(mut self) {
        let keys = self.keys().await;
        if !keys.is_empty() {
            let _: i64 = self.conn.del(&keys).await.expect("DEL");
        }
        assert_eq!(self.keys().await, Vec::<String>::new());
        self.cleaned = true;
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let Ok(mut conn) = redis::Client::open(REDIS_URL).and_then(|c| c.get_connection()) else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&keys).query(&mut conn);
        }
    }
}

fn assert_recent_ttl(pttl: i64, ttl: i64) {
    assert!(
        pttl > ttl - 10_000 && pttl <= ttl,
        "PTTL {pttl} should be just under {ttl}"
    );
}

// ---------------------------------------------------------------- set_sku

#[tokio::test]
async fn set_sku_creates_the_stock_hash_the_stream_and_the_ledger_group() {
    let mut lab = Lab::new().await;
    let request = lab.put(settings(10, 2, 60_000, 1));

    let reply = lab.set_sku(&request).await;

    assert_eq!(
        reply,
        Fenced::Open(SkuChange::Created(figures([10, 0, 0], 2, 60_000, 1)))
    );
    let stock = lab.key("stock");
    assert_eq!(
        lab.hash(&stock).await,
        fields! {"on_hand" => 10, "held" => 0, "sold" => 0, "limit" => 2, "ttl_ms" => 60_000,
        "max_ext" => 1, "epoch" => EPOCH, "sku_no" => SKU_NO}
    );
    assert_eq!(
        lab.events().await,
        vec![(
            stream_id(0),
            fields! {"t" => "adjust", "i" => request.event_id, "d" => 10, "l" => 2,
            "ttl" => 60_000, "x" => 1, "r" => "stocktake"}
        )]
    );
    assert_eq!(
        lab.groups().await,
        [(GROUP.to_owned(), "0-0".to_owned(), 0)]
    );
    lab.finish().await;
}

#[tokio::test]
async fn set_sku_put_replaces_the_settings_and_keeps_epoch_and_sku_number() {
    let mut lab = Lab::new().await;
    lab.create(SETTINGS).await;
    let request = SetSku {
        epoch: EPOCH + 2,
        change: StockChange::Put {
            settings: settings(15, 3, 30_000, 4),
            sku_no: SKU_NO + 1,
        },
        ..lab.put(SETTINGS)
    };

    let reply = lab.set_sku(&request).await;

    assert_eq!(
        reply,
        Fenced::Open(SkuChange::Updated(figures([15, 0, 0], 3, 30_000, 4)))
    );
    let stock = lab.key("stock");
    assert_eq!(
        lab.hash(&stock).await,
        fields! {"on_hand" => 15, "held" => 0, "sold" => 0, "limit" => 3, "ttl_ms" => 30_000,
        "max_ext" => 4, "epoch" => EPOCH, "sku_no" => SKU_NO}
    );
    assert_eq!(lab.xlen().await, 2);
    assert_eq!(
        lab.last_event().await,
        (
            stream_id(1),
            fields! {"t" => "adjust", "i" => request.event_id, "d" => 5, "l" => 3,
            "ttl" => 30_000, "x" => 4, "r" => "stocktake"}
        )
    );
    lab.finish().await;
}

#[tokio::test]
async fn set_sku_adjust_moves_on_hand_by_the_delta_and_keeps_the_settings() {
    let mut lab = Lab::new().await;
    lab.create(SETTINGS).await;
    lab.hold_for("alice", 2).await;

    let request = lab.adjust(-3);
    let reply = lab.set_sku(&request).await;

    assert_eq!(
        reply,
        Fenced::Open(SkuChange::Updated(figures([7, 2, 0], 0, TTL, 2)))
    );
    assert_eq!(lab.counters().await, [7, 2, 0]);
    assert_eq!(
        lab.last_event().await,
        (
            stream_id(2),
            fields! {"t" => "adjust", "i" => request.event_id, "d" => -3, "l" => 0,
            "ttl" => TTL, "x" => 2, "r" => "stocktake"}
        )
    );
    let reply = lab.set_sku(&lab.adjust(5)).await;
    assert_eq!(
        reply,
        Fenced::Open(SkuChange::Updated(figures([12, 2, 0], 0, TTL, 2)))
    );
    assert_eq!(lab.counters().await, [12, 2, 0]);
    assert_eq!(lab.xlen().await, 4);
    lab.finish().await;
}

#[tokio::test]
async fn set_sku_refuses_on_hand_below_held_plus_sold_and_writes_nothing() {
    let mut lab = Lab::new().await;
    lab.create(SETTINGS).await;
    let stock = lab.key("stock");
    lab.hset(&stock, &[("held", 3), ("sold", 4)]).await;
    let before = lab.snapshot().await;

    let by_delta = lab.set_sku(&lab.adjust(-4)).await;
    let by_put = lab
        .set_sku(&lab.put(SkuSettings {
            on_hand: 6,
            per_customer_limit: 9,
            ..SETTINGS
        }))
        .await;

    let conflict = Fenced::Open(SkuChange::Conflict {
        requested: 6,
        held: 3,
        sold: 4,
    });
    assert_eq!(by_delta, conflict);
    assert_eq!(by_put, conflict);
    assert_eq!(
        lab.snapshot().await,
        before,
        "stock hash and stream unchanged"
    );
    assert_eq!(lab.xlen().await, 1);
    // Exactly held + sold is allowed.
    let reply = lab.set_sku(&lab.adjust(-3)).await;
    assert_eq!(
        reply,
        Fenced::Open(SkuChange::Updated(figures([7, 3, 4], 0, TTL, 2)))
    );
    lab.finish().await;
}

#[tokio::test]
async fn set_sku_refuses_a_negative_creation_and_adjusting_a_missing_sku() {
    let mut lab = Lab::new().await;

    let negative = lab
        .set_sku(&lab.put(SkuSettings {
            on_hand: -1,
            ..SETTINGS
        }))
        .await;
    let missing = lab.set_sku(&lab.adjust(5)).await;

    assert_eq!(
        negative,
        Fenced::Open(SkuChange::Conflict {
            requested: -1,
            held: 0,
            sold: 0
        })
    );
    assert_eq!(missing, Fenced::Open(SkuChange::UnknownSku));
    assert_eq!(lab.keys().await, Vec::<String>::new(), "nothing written");
    lab.finish().await;
}

// ---------------------------------------------------------------- admit

#[tokio::test]
async fn admit_holds_units_and_writes_hold_expiry_counter_record_and_event() {
    let mut lab = Lab::new().await;
    lab.create(SETTINGS).await;
    let request = lab.admit_req("key-1", "alice", 2);

    // Created now by Redis's clock, expiring TTL later.
    let (created, expires) = lab.admit_held(&request).await;

    let hold = request.hold_id;
    assert_eq!(lab.counters().await, [10, 2, 0]);
    let hold_key = lab.hold_key(hold);
    assert_eq!(
        lab.hash(&hold_key).await,
        fields! {"s" => "held", "c" => "alice", "q" => 2, "e" => expires, "x" => 0,
        "t" => created, "a" => request.event_id}
    );
    assert_eq!(lab.pttl(&hold_key).await, -1, "a live hold does not expire");
    assert_eq!(lab.expiry_score(hold).await, Some(expires));
    assert_eq!(lab.get("c:alice").await.as_deref(), Some("2"));
    assert_eq!(
        lab.get("i:key-1").await,
        Some(format!("fp-1|H|{hold}|{expires}"))
    );
    let idem_key = lab.key("i:key-1");
    assert_recent_ttl(lab.pttl(&idem_key).await, IDEM_TTL);
    assert_eq!(
        lab.last_event().await,
        (
            stream_id(1),
            fields! {"t" => "admit", "i" => request.event_id, "h" => hold, "c" => "alice",
            "q" => 2, "e" => expires, "k" => "key-1", "f" => "fp-1"}
        )
    );
    lab.finish().await;
}

#[tokio::test]
async fn admit_fingerprints_the_customer_and_quantity_by_default() {
    let mut lab = Lab::new().await;
    lab.create(SETTINGS).await;
    let request = Admit::new(
        lab.sku.clone(),
        hold_id(),
        customer("alice"),
        Quantity::parse(1).unwrap(),
        key("key-1"),
    );
    let same = Admit {
        hold_id: hold_id(),
        ..request.clone()
    };
    let other = Admit::new(
        lab.sku.clone(),
        hold_id(),
        customer("alice"),
        Quantity::parse(2).unwrap(),
        key("key-1"),
    );

    let (_, expires) = lab.admit_held(&request).await;
    let replay = lab.admit(&same).await;
    let reused = lab.admit(&other).await;

    let held = Admission::Held {
        hold_id: request.hold_id,
        expires_at_ms: expires,
    };
    assert_eq!(replay, Fenced::Open(Admission::Replayed(Box::new(held))));
    assert_eq!(reused, Fenced::Open(Admission::KeyReused));
    assert_eq!(
        lab.get("i:key-1").await,
        Some(format!(
            "{}|H|{}|{expires}",
            request.fingerprint, request.hold_id
        ))
    );
    assert_eq!(lab.counters().await, [10, 1, 0]);
    lab.finish().await;
}

#[tokio::test]
async fn admit_replays_the_same_body_and_refuses_another_body_without_writing() {
    let mut lab = Lab::new().await;
    lab.create(SETTINGS).await;
    let first = lab.admit_req("key-1", "alice", 1);
    let (_, expires) = lab.admit_held(&first).await;
    let before = lab.snapshot().await;

    let replay = lab.admit(&lab.admit_req("key-1", "alice", 1)).await;
    let reused = lab
        .admit(&Admit {
            fingerprint: "fp-2".to_owned(),
            ..lab.admit_req("key-1", "alice", 1)
        })
        .await;

    assert_eq!(
        replay,
        Fenced::Open(Admission::Replayed(Box::new(Admission::Held {
            hold_id: first.hold_id,
            expires_at_ms: expires
        })))
    );
    assert_eq!(reused, Fenced::Open(Admission::KeyReused));
    assert_eq!(lab.snapshot().await, before, "no second hold, no event");
    assert_eq!(lab.counters().await, [10, 1, 0]);
    assert_eq!(lab.xlen().await, 2);
    lab.finish().await;
}

#[tokio::test]
async fn admit_sold_out_gives_retry_after_only_while_a_hold_is_live_and_writes_nothing() {
    let mut lab = Lab::new().await;
    lab.create(SkuSettings {
        on_hand: 1,
        ..SETTINGS
    })
    .await;

    let nothing_held = lab.admit(&lab.admit_req("key-bob", "bob", 2)).await;
    assert_eq!(
        nothing_held,
        Fenced::Open(Admission::SoldOut {
            retry_after_ms: None
        })
    );
    assert_eq!(
        lab.get("i:key-bob").await,
        None,
        "a rejection stores nothing"
    );

    // Retry-After counts by Redis's clock to the first expiry: a hold
    // expiring in 30 s, then one expiring in half a second.
    let held = lab.hold_for("alice", 1).await;
    let held = lab
        .place_expiry(&held, lab.redis_now().await + 30_000)
        .await;
    let soon = lab.admit(&lab.admit_req("key-carol", "carol", 1)).await;
    let Fenced::Open(Admission::SoldOut {
        retry_after_ms: Some(soon_ms),
    }) = soon
    else {
        panic!("{soon:?}");
    };
    assert!(
        (29_000..=30_000).contains(&soon_ms),
        "{soon_ms} ms to the expiry"
    );
    lab.place_expiry(&held, lab.redis_now().await + 500).await;
    let before = lab.snapshot().await;
    let almost = lab.admit(&lab.admit_req("key-dave", "dave", 1)).await;

    let sold_out = |ms| {
        Fenced::Open(Admission::SoldOut {
            retry_after_ms: Some(ms),
        })
    };
    assert_eq!(almost, sold_out(1_000), "at least a second");
    assert_eq!(lab.snapshot().await, before, "nothing written");
    assert_eq!(lab.counters().await, [1, 1, 0]);

    // Held units without an expiry entry: a second, not zero.
    let expiry = lab.key("expiry");
    let _: i64 = lab
        .conn
        .zrem(expiry, held.hold.to_string())
        .await
        .expect("ZREM");
    let unindexed = lab.admit(&lab.admit_req("key-erin", "erin", 1)).await;
    assert_eq!(unindexed, sold_out(1_000));
    lab.finish().await;
}

#[tokio::test]
async fn admit_refuses_beyond_the_per_customer_limit_and_writes_nothing() {
    let mut lab = Lab::new().await;
    lab.create(SkuSettings {
        per_customer_limit: 2,
        ..SETTINGS
    })
    .await;
    lab.hold_for("alice", 2).await;
    let before = lab.snapshot().await;

    let reply = lab.admit(&lab.admit_req("key-more", "alice", 1)).await;

    assert_eq!(
        reply,
        Fenced::Open(Admission::LimitExceeded {
            limit: 2,
            already: 2
        })
    );
    assert_eq!(lab.snapshot().await, before, "nothing written");
    // The limit is per customer.
    lab.hold_for("bob", 2).await;
    assert_eq!(lab.counters().await, [10, 4, 0]);
    lab.finish().await;
}

#[tokio::test]
async fn a_rejected_key_is_decided_afresh_and_only_holds_replay() {
    let mut lab = Lab::new().await;
    lab.create(SkuSettings {
        on_hand: 2,
        per_customer_limit: 1,
        ..SETTINGS
    })
    .await;
    // A rejection's record that an older version stored is no record.
    let legacy = lab.key("i:key-erin");
    let () = lab.conn.set(&legacy, "fp-2|S|1000").await.expect("SET");
    let erin = lab.admit_req("key-erin", "erin", 1);
    let (_, expires) = lab.admit_held(&erin).await;
    assert_eq!(
        lab.get("i:key-erin").await,
        Some(format!("fp-1|H|{}|{expires}", erin.hold_id))
    );
    let held = lab.hold_for("alice", 1).await;

    let bob = lab.admit_req("key-bob", "bob", 1);
    let alice = lab.admit_req("key-alice", "alice", 1);
    assert!(matches!(
        lab.admit(&bob).await,
        Fenced::Open(Admission::SoldOut { .. })
    ));
    let over_limit = Fenced::Open(Admission::LimitExceeded {
        limit: 1,
        already: 1,
    });
    assert_eq!(lab.admit(&alice).await, over_limit);
    assert_eq!(lab.admit(&alice).await, over_limit, "decided again");
    assert_eq!(
        (lab.get("i:key-bob").await, lab.get("i:key-alice").await),
        (None, None)
    );

    // A unit comes back: the same keys are decided afresh. Bob asks first.
    lab.done(Op::Release, held.hold).await;
    let (_, bob_expires) = lab.admit_held(&bob).await;
    assert!(matches!(
        lab.admit(&alice).await,
        Fenced::Open(Admission::SoldOut { .. })
    ));
    assert_eq!(
        lab.admit(&bob).await,
        Fenced::Open(Admission::Replayed(Box::new(Admission::Held {
            hold_id: bob.hold_id,
            expires_at_ms: bob_expires
        }))),
        "a hold replays"
    );
    assert_eq!(lab.counters().await, [2, 2, 0]);
    lab.finish().await;
}

/// An admission's outcome without what depends on the moment it was
/// decided (expiry, Retry-After).
fn timeless(admission: Admission) -> Admission {
    match admission {
        Admission::Held { hold_id, .. } => Admission::Held {
            hold_id,
            expires_at_ms: 0,
        },
        Admission::Replayed(first) => Admission::Replayed(Box::new(timeless(*first))),
        Admission::SoldOut { retry_after_ms } => Admission::SoldOut {
            retry_after_ms: retry_after_ms.map(|_| 0),
        },
        other => other,
    }
}

#[tokio::test]
async fn a_batch_gives_each_admission_the_outcome_it_gets_alone_in_one_entry() {
    let settings = SkuSettings {
        on_hand: 4,
        per_customer_limit: 2,
        ..SETTINGS
    };
    let (mut batched, alone) = (Lab::new().await, Lab::new().await);
    batched.create(settings).await;
    alone.create(settings).await;
    let requests: Vec<Admit> = [
        ("k1", "alice", 1, "fp-a1"),
        ("k1", "alice", 1, "fp-a1"), // a replay inside the batch
        ("k1", "alice", 2, "fp-a2"), // the key reused
        ("k2", "alice", 2, "fp-a2"), // over alice's limit
        ("k3", "bob", 2, "fp-b2"),
        ("k4", "carol", 2, "fp-c2"), // one unit left: sold out
        ("k5", "carol", 1, "fp-c1"), // the last unit
        ("k6", "dave", 1, "fp-d1"),  // none left
        ("k3", "bob", 2, "fp-b2"),   // bob's hold replays
    ]
    .into_iter()
    .map(|(key, customer, qty, fingerprint)| Admit {
        fingerprint: fingerprint.to_owned(),
        ..batched.admit_req(key, customer, qty)
    })
    .collect();

    let replies = batched
        .gate
        .admit_batch(&AdmitBatch {
            sku: batched.sku.clone(),
            admissions: requests.clone(),
            backlog_limit: NO_BACKLOG_LIMIT,
        })
        .await
        .expect("admit_batch runs");
    let mut each_alone = Vec::new();
    for request in &requests {
        each_alone.push(alone.admit(request).await);
    }

    let outcomes = |replies: Vec<Fenced<Admission>>| -> Vec<Admission> {
        replies
            .into_iter()
            .map(|reply| timeless(reply.open().expect("open")))
            .collect()
    };
    let batched_outcomes = outcomes(
        replies
            .iter()
            .map(|reply| match reply {
                Fenced::Open(AdmitReply { admission, .. }) => Fenced::Open(admission.clone()),
                Fenced::Closed => Fenced::Closed,
            })
            .collect(),
    );
    assert_eq!(batched_outcomes, outcomes(each_alone));
    let held = |i: usize| Admission::Held {
        hold_id: requests[i].hold_id,
        expires_at_ms: 0,
    };
    assert_eq!(
        batched_outcomes,
        [
            held(0),
            Admission::Replayed(Box::new(held(0))),
            Admission::KeyReused,
            Admission::LimitExceeded {
                limit: 2,
                already: 1
            },
            held(4),
            Admission::SoldOut {
                retry_after_ms: Some(0)
            },
            held(6),
            Admission::SoldOut {
                retry_after_ms: Some(0)
            },
            Admission::Replayed(Box::new(held(4))),
        ]
    );
    assert!(matches!(
        replies[7],
        Fenced::Open(AdmitReply {
            none_left: true,
            ..
        })
    ));
    assert!(matches!(
        replies[5],
        Fenced::Open(AdmitReply {
            none_left: false,
            ..
        })
    ));
    assert_eq!(batched.counters().await, [4, 4, 0]);

    // One stream entry for the batch, read back as its three admissions in
    // order, each as admit.lua writes it.
    assert_eq!(batched.xlen().await, 2);
    let events = batched
        .gate
        .events(&batched.sku, position(0), None, 10)
        .await
        .expect("events");
    let admitted: Vec<(HoldId, String, i64)> = events
        .iter()
        .map(|event| match &event.change {
            dropgate::domain::Change::Admit {
                hold_id,
                customer_id,
                quantity,
                ..
            } => (*hold_id, customer_id.clone(), *quantity),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        admitted,
        [
            (requests[0].hold_id, "alice".to_owned(), 1),
            (requests[4].hold_id, "bob".to_owned(), 2),
            (requests[6].hold_id, "carol".to_owned(), 1),
        ]
    );
    assert!(events.iter().all(|e| e.position == position(1)));
    assert_eq!(
        events.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        [
            requests[0].event_id,
            requests[4].event_id,
            requests[6].event_id
        ]
    );
    batched.finish().await;
    alone.finish().await;
}

#[tokio::test]
async fn admit_for_a_missing_sku_writes_nothing() {
    let mut lab = Lab::new().await;

    let reply = lab.admit(&lab.admit_req("key-1", "alice", 1)).await;

    assert_eq!(reply, Fenced::Open(Admission::UnknownSku));
    assert_eq!(
        lab.keys().await,
        Vec::<String>::new(),
        "no idempotency record"
    );
    lab.finish().await;
}

#[tokio::test]
async fn admit_refuses_while_the_stream_is_longer_than_the_backlog_limit() {
    let mut lab = Lab::new().await;
    lab.create(SETTINGS).await;
    lab.hold_for("alice", 1).await;
    let before = lab.snapshot().await;
    assert_eq!(lab.xlen().await, 2);

    let reply = lab
        .admit(&Admit {
            backlog_limit: 2,
            ..lab.admit_req("key-2", "bob", 1)
        })
        .await;

    assert_eq!(reply, Fenced::Open(Admission::Backlogged));
    assert_eq!(lab.snapshot().await, before, "nothing written");
    let reply = lab
        .admit(&Admit {
            backlog_limit: 3,
            ..lab.admit_req("key-2", "bob", 1)
        })
        .await;
    assert!(
        matches!(reply, Fenced::Open(Admission::Held { .. })),
        "{reply:?}"
    );
    lab.finish().await;
}

// ---------------------------------------------------------------- settle (confirm / release)

/// The position a transition names: where its event (or the expiry it
/// triggered) sits.
fn named_position(reply: &Fenced<Transition>) -> Option<Position> {
    match reply {
        Fenced::Open(Transition::Done { position, .. }) => Some(*position),
        Fenced::Open(Transition::Conflict { position, .. }) => *position,
        _ => None,
    }
}

/// Checks a hold just settled by a transition: state, TTL, expiry entry gone,
/// and the stream's last entry.
async fn assert_settled(
    lab: &mut Lab,
    (reply, event_id): &(Fenced<Transition>, Uuid),
    held: &Held,
    state: &str,
    kind: &str,
) {
    let hold_key = lab.hold_key(held.hold);
    assert_eq!(lab.hash(&hold_key).await, held.fields(state));
    assert_recent_ttl(lab.pttl(&hold_key).await, SETTLED_TTL);
    assert_eq!(lab.expiry_score(held.hold).await, None);
    let (id, event) = lab.last_event().await;
    assert_eq!(
        named_position(reply).map(Position::stream_id),
        Some(id),
        "reply names the event"
    );
    assert_eq!(
        event,
        fields! {"t" => kind, "i" => event_id, "h" => held.hold, "c" => held.customer,
        "q" => held.qty}
    );
}

/// Every transition script on `held` answers as `expected`, with no
/// position, and changes nothing.
async fn assert_all_inert(lab: &mut Lab, held: &Held, expected: [(Op, Inert); 3]) {
    let before = lab.snapshot().await;
    for (op, inert) in expected {
        let state = lab.hash(&lab.hold_key(held.hold)).await["s"].clone();
        let hold = held.gate_hold(HoldState::parse(&state).unwrap());
        let (reply, _) = lab.transition(op, held.hold).await;
        let expected = match inert {
            Inert::Same => Transition::Same { hold },
            Inert::Conflict => Transition::Conflict {
                hold,
                position: None,
            },
        };
        assert_eq!(reply, Fenced::Open(expected), "{op:?}");
    }
    assert_eq!(lab.snapshot().await, before);
}

#[tokio::test]
async fn confirm_moves_held_to_sold_once() {
    let mut lab = Lab::new().await;
    lab.create(SETTINGS).await;
    let held = lab.hold_for("alice", 2).await;

    let call = lab.transition(Op::Confirm, held.hold).await;

    assert_eq!(call.0, held.done(HoldState::Confirmed, 2));
    assert_eq!(lab.counters().await, [10, 0, 2]);
    assert_eq!(
        lab.get("c:alice").await.as_deref(),
        Some("2"),
        "bought units still count toward the limit"
    );
    assert_settled(&mut lab, &call, &held, "confirmed", "confirm").await;
    assert_all_inert(
        &mut lab,
        &held,
        [
            (Op::Confirm, Inert::Same),
            (Op::Release, Inert::Conflict),
            (Op::Extend, Inert::Conflict),
        ],
    )
    .await;
    assert_eq!(lab.counters().await, [10, 0, 2]);
    lab.finish().await;
}

#[tokio::test]
async fn release_returns_the_units_and_the_customer_count_once() {
    let mut lab = Lab::new().await;
    lab.create(SETTINGS).await;
    let small = lab.hold_for("alice", 1).await;
    let large = lab.hold_for("alice", 2).await;

    let call = lab.transition(Op::Release, large.hold).await;

    assert_eq!(call.0, large.done(HoldState::Released, 3));
    assert_eq!(lab.counters().await, [10, 1, 0]);
    assert_eq!(lab.get("c:alice").await.as_deref(), Some("1"));
    assert_settled(&mut lab, &call, &large, "released", "release").await;

    let call = lab.transition(Op::Release, small.hold).await;
    assert_eq!(call.0, small.done(HoldState::Released, 4));
    assert_eq!(lab.counters().await, [10, 0, 0]);
    assert_eq!(lab.get("c:alice").await, None, "deleted at zero");
    assert_all_inert(
        &mut lab,
        &small,
        [
            (Op::Release, Inert::Same),
            (Op::Confirm, Inert::Conflict),
            (Op::Extend, Inert::Conflict),
        ],
    )
    .await;
    assert_eq!(lab.counters().await, [10, 0, 0]);
    lab.finish().await;
}

#[tokio::test]
async fn transitions_of_an_unknown_hold_answer_no_hold() {
    let mut lab = Lab::new().await;
    lab.create(SETTINGS).await;
    let before = lab.snapshot().await;
    let hold = hold_id();

    for op in [Op::Confirm, Op::Release, Op::Extend] {
        let (reply, _) = lab.transition(op, hold).await;
        assert_eq!(reply, Fenced::Open(Transition::NoHold), "{op:?}");
    }

    assert_eq!(lab.snapshot().await, before);
    lab.finish().await;
}

#[tokio::test]
async fn a_hold_past_its_expiry_is_expired_by_whoever_touches_it_first_once() {
    for first in [Op::Confirm, Op::Release, Op::Extend] {
        let mut lab = Lab::new().await;
        lab.create(SETTINGS).await;
        let held = lab.hold_for("alice", 2).await;
        // Due by Redis's clock.
        let held = lab.place_expiry(&held, lab.redis_now().await - 1).await;

        let call = lab.transition(first, held.hold).await;

        assert_eq!(
            call.0,
            held.conflict(HoldState::Expired, Some(2)),
            "{first:?}"
        );
        assert_eq!(lab.counters().await, [10, 0, 0], "units returned");
        assert_eq!(lab.get("c:alice").await, None);
        assert_settled(&mut lab, &call, &held, "expired", "expire").await;
        let before = lab.snapshot().await;
        assert_all_inert(
            &mut lab,
            &held,
            [
                (Op::Release, Inert::Conflict),
                (Op::Confirm, Inert::Conflict),
                (Op::Extend, Inert::Conflict),
            ],
        )
        .await;
        let (reply, _) = lab.expire(5).await;
        assert_eq!(
            reply,
            Fenced::Open(Expired {
                expired: 0,
                still_due: 0,
                next_due_ms: None,
            })
        );
        assert_eq!(lab.snapshot().await, before, "returned exactly once");
        lab.finish().await;
    }
}

// ---------------------------------------------------------------- extend

#[tokio::test]
async fn extend_moves_the_expiry_up_to_max_extensions_times() {
    let mut lab = Lab::new().await;
    lab.create(SETTINGS).await;
    let held = lab.hold_for("alice", 1).await;

    let mut extended = held.clone();
    // The expiry moves to now + TTL by Redis's clock. The second extension
    // finds the first's deadline 100 ms away: the first really moved it.
    for n in 1..=2 {
        if n == 2 {
            lab.place_expiry(&extended, lab.redis_now().await + 100)
                .await;
        }
        let (reply, event_id) = lab.transition(Op::Extend, held.hold).await;
        let Fenced::Open(Transition::Done { hold, .. }) = &reply else {
            panic!("{reply:?}");
        };
        let now = hold.expires_at_ms - TTL;
        lab.assert_redis_time(now).await;
        extended = held.with_expiry(now + TTL, n);
        assert_eq!(reply, extended.done(HoldState::Held, 1 + n));
        let hold_key = lab.hold_key(held.hold);
        assert_eq!(lab.hash(&hold_key).await, extended.fields("held"));
        assert_eq!(lab.expiry_score(held.hold).await, Some(now + TTL));
        let key = lab.key("events");
        let (_, event): (String, Fields) = lab
            .conn
            .xrevrange_count(key, "+", "-", 1)
            .await
            .map(|mut entries: Vec<(String, Fields)>| entries.remove(0))
            .expect("XREVRANGE");
        assert_eq!(
            event,
            fields! {"t" => "extend", "i" => event_id, "h" => held.hold, "c" => "alice",
            "q" => 1, "m" => now, "e" => now + TTL},
            "the event carries the time the script read"
        );
    }
    assert_eq!(lab.counters().await, [10, 1, 0]);

    let before = lab.snapshot().await;
    let (reply, _) = lab.transition(Op::Extend, held.hold).await;
    assert_eq!(
        reply,
        Fenced::Open(Transition::ExtensionLimit {
            hold: extended.gate_hold(HoldState::Held)
        })
    );
    assert_eq!(lab.snapshot().await, before);

    lab.done(Op::Release, held.hold).await;
    let (reply, _) = lab.transition(Op::Extend, held.hold).await;
    assert_eq!(reply, extended.conflict(HoldState::Released, None));
    lab.finish().await;
}

// ---------------------------------------------------------------- expire

#[tokio::test]
async fn expire_expires_only_due_holds_and_only_once() {
    let mut lab = Lab::new().await;
    lab.create(SETTINGS).await;
    // a and b are due by Redis's clock, c is not.
    let now = lab.redis_now().await;
    let a = lab.hold_for("alice", 1).await;
    let a = lab.place_expiry(&a, now - 2_000).await;
    let b = lab.hold_for("bob", 2).await;
    let b = lab.place_expiry(&b, now - 1_000).await;
    let c = lab.hold_for("carol", 3).await;

    let (reply, ids) = lab.expire(10).await;

    assert_eq!(
        reply,
        Fenced::Open(Expired {
            expired: 2,
            still_due: 0,
            next_due_ms: Some(c.expires),
        })
    );
    assert_eq!(lab.counters().await, [10, 3, 0]);
    assert_eq!(
        (lab.get("c:alice").await, lab.get("c:bob").await),
        (None, None)
    );
    assert_eq!(lab.get("c:carol").await.as_deref(), Some("3"));
    let hold_key = lab.hold_key(c.hold);
    assert_eq!(lab.hash(&hold_key).await, c.fields("held"));
    assert_eq!(lab.pttl(&hold_key).await, -1);
    assert_eq!(lab.expiry_score(c.hold).await, Some(c.expires));
    let expired: Vec<_> = lab.events().await.split_off(4);
    let expected: Vec<_> = [(&a, &ids[0]), (&b, &ids[1])]
        .iter()
        .enumerate()
        .map(|(n, (held, id))| {
            (
                stream_id(4 + n as i64),
                fields! {"t" => "expire", "i" => id, "h" => held.hold, "c" => held.customer,
                "q" => held.qty},
            )
        })
        .collect();
    assert_eq!(expired, expected);
    for held in [&a, &b] {
        let hold_key = lab.hold_key(held.hold);
        assert_eq!(lab.hash(&hold_key).await, held.fields("expired"));
        assert_recent_ttl(lab.pttl(&hold_key).await, SETTLED_TTL);
    }

    let before = lab.snapshot().await;
    let (reply, _) = lab.expire(10).await;
    assert_eq!(
        reply,
        Fenced::Open(Expired {
            expired: 0,
            still_due: 0,
            next_due_ms: Some(c.expires),
        })
    );
    assert_eq!(lab.snapshot().await, before);
    lab.finish().await;
}

#[tokio::test]
async fn expire_handles_at_most_one_hold_per_event_id() {
    let mut lab = Lab::new().await;
    lab.create(SETTINGS).await;
    let mut holds = Vec::new();
    let now = lab.redis_now().await;
    for n in 0..3 {
        let held = lab.hold_for("alice", 1).await;
        holds.push(lab.place_expiry(&held, now - 10 + n).await);
    }
    let expired = |expired, still_due, next_due_ms| {
        Fenced::Open(Expired {
            expired,
            still_due,
            next_due_ms,
        })
    };

    let (first, first_ids) = lab.expire(2).await;
    assert_eq!(first, expired(2, 1, Some(holds[2].expires)));
    assert_eq!(lab.counters().await, [10, 1, 0]);
    let (second, second_ids) = lab.expire(2).await;
    assert_eq!(second, expired(1, 0, None));
    assert_eq!(lab.counters().await, [10, 0, 0]);
    assert_eq!(lab.get("c:alice").await, None);

    let settled: Vec<_> = lab
        .events()
        .await
        .split_off(4)
        .into_iter()
        .map(|(_, e)| (e["h"].clone(), e["i"].clone()))
        .collect();
    let expected: Vec<_> = holds
        .iter()
        .map(|h| h.hold.to_string())
        .zip(
            first_ids
                .iter()
                .chain(second_ids.iter().take(1))
                .map(Uuid::to_string),
        )
        .collect();
    assert_eq!(settled, expected, "earliest first, one event id each");
    let (third, _) = lab.expire(2).await;
    assert_eq!(third, expired(0, 0, None));
    lab.finish().await;
}

#[tokio::test]
async fn expire_drops_stale_entries_of_settled_or_missing_holds_without_counting() {
    let mut lab = Lab::new().await;
    lab.create(SETTINGS).await;
    let confirmed = lab.hold_for("alice", 1).await;
    let released = lab.hold_for("bob", 1).await;
    // All due by Redis's clock: the live hold before the stale entries of
    // the settled holds, after the missing one.
    let now = lab.redis_now().await;
    let live = lab.hold_for("carol", 1).await;
    let live = lab.place_expiry(&live, now - 2_000).await;
    lab.done(Op::Confirm, confirmed.hold).await;
    lab.done(Op::Release, released.hold).await;
    lab.zadd(&confirmed.hold.to_string(), now - 1_000).await;
    lab.zadd(&released.hold.to_string(), now - 1_000).await;
    lab.zadd(&fresh_id(), now - 3_000).await;
    assert_eq!(lab.counters().await, [10, 1, 1]);
    let events_before = lab.xlen().await;
    let hold_key = lab.hold_key(confirmed.hold);
    let confirmed_before = lab.hash(&hold_key).await;

    let (reply, ids) = lab.expire(10).await;

    assert_eq!(
        reply,
        Fenced::Open(Expired {
            expired: 1,
            still_due: 0,
            next_due_ms: None,
        })
    );
    let expiry = lab.key("expiry");
    let left: i64 = lab.conn.zcard(expiry).await.expect("ZCARD");
    assert_eq!(left, 0, "stale entries removed");
    assert_eq!(
        lab.counters().await,
        [10, 0, 1],
        "only the live hold returned"
    );
    assert_eq!(lab.hash(&hold_key).await, confirmed_before);
    assert_eq!(lab.get("c:alice").await.as_deref(), Some("1"));
    assert_eq!(lab.get("c:carol").await, None);
    assert_eq!(lab.xlen().await, events_before + 1);
    assert_eq!(
        lab.last_event().await.1,
        fields! {"t" => "expire", "i" => ids[1], "h" => live.hold, "c" => "carol", "q" => 1}
    );
    lab.finish().await;
}

// ---------------------------------------------------------------- lose

#[tokio::test]
async fn lose_takes_the_units_out_with_the_settle_step_once_and_appends_nothing() {
    let mut lab = Lab::new().await;
    lab.create(SETTINGS).await;
    let held = lab.hold_for("alice", 2).await;
    let confirmed = lab.hold_for("bob", 3).await;
    let released = lab.hold_for("carol", 1).await;
    lab.done(Op::Confirm, confirmed.hold).await;
    lab.done(Op::Release, released.hold).await;
    assert_eq!(lab.counters().await, [10, 2, 3]);
    let events = lab.xlen().await;
    let lose = async |hold: HoldId| lab.gate.lose(&lab.sku, hold).await.expect("lose runs");

    assert_eq!(lose(held.hold).await, Fenced::Open(Some(HoldState::Held)));
    assert_eq!(
        lose(confirmed.hold).await,
        Fenced::Open(Some(HoldState::Confirmed))
    );
    assert_eq!(
        lose(released.hold).await,
        Fenced::Open(Some(HoldState::Released))
    );
    assert_eq!(lose(hold_id()).await, Fenced::Open(None), "unknown hold");

    assert_eq!(lab.counters().await, [10, 0, 0], "held and sold units out");
    for customer in ["c:alice", "c:bob", "c:carol"] {
        assert_eq!(lab.get(customer).await, None, "{customer}");
    }
    for lost in [&held, &confirmed, &released] {
        let hold_key = lab.hold_key(lost.hold);
        assert_eq!(lab.hash(&hold_key).await["s"], "lost");
        assert_recent_ttl(lab.pttl(&hold_key).await, SETTLED_TTL);
        assert_eq!(lab.expiry_score(lost.hold).await, None);
    }
    assert_eq!(lab.xlen().await, events, "no event: the ledger refused it");

    let before = lab.snapshot().await;
    let again = lab.gate.lose(&lab.sku, held.hold).await.unwrap();
    assert_eq!(again, Fenced::Open(Some(HoldState::Lost)));
    assert_eq!(lab.snapshot().await, before, "lost once");
    lab.finish().await;
}

// ---------------------------------------------------------------- snapshot / repair

#[tokio::test]
async fn repair_sets_the_counters_only_at_the_fence_it_was_given() {
    let mut lab = Lab::new().await;
    assert_eq!(lab.gate.snapshot(&lab.sku).await.unwrap(), None);
    lab.create(SETTINGS).await;
    lab.hold_for("alice", 1).await;

    let snapshot = lab
        .gate
        .snapshot(&lab.sku)
        .await
        .unwrap()
        .expect("in the gate");

    assert_eq!((snapshot.on_hand, snapshot.held, snapshot.sold), (10, 1, 0));
    assert_eq!((snapshot.last, snapshot.backlog), (Some(position(1)), 2));
    let ledger = Stock {
        on_hand: 12,
        held: 0,
        sold: 0,
    };
    let repaired = lab.gate.repair(&lab.sku, &snapshot, ledger).await.unwrap();
    assert_eq!(repaired, Fenced::Open(true));
    assert_eq!(lab.counters().await, [12, 0, 0]);

    // An event after the fence: the comparison is stale, nothing is set.
    lab.hold_for("bob", 1).await;
    let before = lab.snapshot().await;
    let stale = lab.gate.repair(&lab.sku, &snapshot, ledger).await.unwrap();
    assert_eq!(stale, Fenced::Open(false));
    assert_eq!(lab.snapshot().await, before);
    assert_eq!(lab.counters().await, [12, 1, 0]);
    lab.finish().await;
}

// ---------------------------------------------------------------- trim

#[tokio::test]
async fn trim_drops_acknowledged_entries_and_keeps_pending_and_undelivered_ones() {
    let mut lab = Lab::new().await;
    assert_eq!(lab.trim().await, 0, "no stream, no group");
    lab.create(SETTINGS).await;
    lab.hold_for("alice", 1).await;
    lab.hold_for("bob", 1).await;
    let consumer = lab.gate.consumer("worker-1").unwrap();
    let skus = [lab.sku.clone()];
    let read = async || -> Vec<String> {
        let read = consumer.read_new(&skus, 100).await.expect("XREADGROUP");
        assert!(read.gone.is_empty());
        let deliveries = read.entries;
        for delivery in &deliveries {
            assert_eq!(delivery.sku, skus[0]);
            let events = delivery.events.as_ref().expect("readable");
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].position, delivery.position);
        }
        deliveries.iter().map(|d| d.position.stream_id()).collect()
    };
    let ack = async |seqs: &[i64]| {
        let positions: Vec<Position> = seqs.iter().copied().map(position).collect();
        consumer.ack(&skus[0], &positions).await.expect("XACK");
    };
    let ids = [0, 1, 2, 3].map(stream_id);
    let [e0, e1, e2, e3] = ids.each_ref().map(String::as_str);
    assert_eq!(lab.trim().await, 0, "nothing delivered yet");

    assert_eq!(read().await, [e0, e1, e2]);
    assert_eq!(lab.trim().await, 0, "all pending");
    ack(&[1]).await;
    assert_eq!(lab.trim().await, 0, "the oldest is still pending");
    ack(&[0]).await;
    assert_eq!(lab.trim().await, 2);
    assert_eq!(lab.event_ids().await, [e2]);

    lab.hold_for("carol", 1).await;
    ack(&[2]).await;
    assert_eq!(lab.trim().await, 1);
    assert_eq!(lab.event_ids().await, [e3], "undelivered is kept");

    assert_eq!(read().await, [e3]);
    assert_eq!(read().await, Vec::<String>::new(), "nothing new");
    assert_eq!(lab.trim().await, 0);
    ack(&[3]).await;
    assert_eq!(lab.trim().await, 1);
    assert_eq!(lab.xlen().await, 0);
    assert_eq!(lab.groups().await, [(GROUP.to_owned(), e3.to_owned(), 0)]);
    lab.finish().await;
}

// ---------------------------------------------------------------- closing and rebuilding

#[tokio::test]
async fn a_closed_sku_refuses_every_script_that_changes_it_and_writes_nothing() {
    let mut lab = Lab::new().await;
    lab.create(SETTINGS).await;
    let held = lab.hold_for("alice", 2).await;
    let held = lab.place_expiry(&held, lab.redis_now().await - 1).await;
    let replayable = lab.admit_req("key-1", "bob", 1);
    lab.admit_held(&replayable).await;
    let fence = lab.gate.snapshot(&lab.sku).await.unwrap().expect("open");

    lab.gate.close_sku(&lab.sku).await.unwrap();

    let keys = lab.keys().await;
    assert!(keys.contains(&lab.key("closed")), "marked: {keys:?}");
    assert!(
        !keys.contains(&lab.key("stock")),
        "stock hash gone: {keys:?}"
    );
    let before = lab.snapshot().await;

    // Every script that changes a SKU, on a fresh admission, a replay, the
    // live hold (due, so it would expire), and the SKU's stock.
    let fresh = lab.admit(&lab.admit_req("key-2", "carol", 1)).await;
    let replay = lab.admit(&lab.admit_req("key-1", "bob", 1)).await;
    let confirm = lab.transition(Op::Confirm, held.hold).await.0;
    let release = lab.transition(Op::Release, held.hold).await.0;
    let extend = lab.transition(Op::Extend, held.hold).await.0;
    let expire = lab.expire(10).await.0;
    let put = lab.set_sku(&lab.put(SETTINGS)).await;
    let adjust = lab.set_sku(&lab.adjust(1)).await;
    let lose = lab.gate.lose(&lab.sku, held.hold).await.unwrap();
    let ledger = Stock::default();
    let repair = lab.gate.repair(&lab.sku, &fence, ledger).await.unwrap();

    assert_eq!((fresh, replay), (Fenced::Closed, Fenced::Closed));
    assert_eq!(
        [confirm, release, extend],
        [Fenced::Closed, Fenced::Closed, Fenced::Closed]
    );
    assert_eq!(expire, Fenced::Closed);
    assert_eq!((put, adjust), (Fenced::Closed, Fenced::Closed));
    assert_eq!((lose, repair), (Fenced::Closed, Fenced::Closed));
    assert_eq!(lab.snapshot().await, before, "nothing written");
    assert_eq!(lab.gate.snapshot(&lab.sku).await.unwrap(), None);
    assert_eq!(lab.gate.sku(&lab.sku).await.unwrap(), None);

    lab.gate.close_sku(&lab.sku).await.unwrap();
    assert_eq!(
        lab.snapshot().await,
        before,
        "closing twice is closing once"
    );
    lab.finish().await;
}

#[tokio::test]
async fn rebuild_refuses_an_open_sku() {
    let mut lab = Lab::new().await;
    let snapshot = SkuSnapshot {
        sku: lab.sku.clone(),
        sku_no: SKU_NO,
        epoch: EPOCH,
        figures: figures([10, 0, 0], 0, TTL, 2),
        holds: Vec::new(),
        customers: Vec::new(),
        keys: Vec::new(),
    };

    // Neither closed nor created: a rebuild must close it first.
    let never_closed = lab.gate.rebuild_sku(&snapshot).await;
    assert!(
        matches!(never_closed, Err(GateError::NotClosed(ref sku)) if *sku == lab.sku),
        "{never_closed:?}"
    );
    assert_eq!(lab.keys().await, Vec::<String>::new());

    lab.create(SETTINGS).await;
    let held = lab.hold_for("alice", 1).await;
    let before = lab.snapshot().await;
    let open = lab.gate.rebuild_sku(&snapshot).await;
    assert!(matches!(open, Err(GateError::NotClosed(_))), "{open:?}");
    assert_eq!(lab.snapshot().await, before, "nothing unlinked");
    let hold_key = lab.hold_key(held.hold);
    assert_eq!(lab.hash(&hold_key).await, held.fields("held"));
    lab.finish().await;
}

#[tokio::test]
async fn rebuild_writes_a_closed_sku_as_the_ledger_has_it_and_opens_it() {
    let mut lab = Lab::new().await;
    lab.create(SETTINGS).await;
    let old = lab.hold_for("dave", 4).await;
    let now = lab.redis_now().await;
    lab.admit_held(&lab.admit_req("key-old", "dave", 1)).await;
    lab.gate.close_sku(&lab.sku).await.unwrap();

    let epoch = EPOCH + 1;
    let (alice, bob) = (hold_id(), hold_id());
    let snapshot = SkuSnapshot {
        sku: lab.sku.clone(),
        sku_no: SKU_NO,
        epoch,
        figures: figures([10, 3, 2], 4, TTL, 2),
        holds: vec![
            LiveHold {
                hold_id: alice,
                customer_id: "alice".to_owned(),
                quantity: 1,
                expires_at_ms: now + TTL,
                extensions: 0,
                created_ms: now,
            },
            LiveHold {
                hold_id: bob,
                customer_id: "bob".to_owned(),
                quantity: 2,
                expires_at_ms: now + 5_000,
                extensions: 1,
                created_ms: now - 1_000,
            },
        ],
        customers: vec![
            ("alice".to_owned(), 1),
            ("bob".to_owned(), 2),
            ("carol".to_owned(), 2),
        ],
        keys: vec![AdmittedKey {
            key: "key-a".to_owned(),
            fingerprint: "fp-a".to_owned(),
            hold_id: alice,
            expires_at_ms: now + TTL,
            created_ms: now - 60_000,
        }],
    };

    lab.gate.rebuild_sku(&snapshot).await.unwrap();

    let registry = format!("{}:skus", lab.prefix);
    let mut expected_keys = vec![
        registry.clone(),
        lab.key("stock"),
        lab.key("events"),
        lab.key("expiry"),
        lab.hold_key(alice),
        lab.hold_key(bob),
        lab.key("c:alice"),
        lab.key("c:bob"),
        lab.key("c:carol"),
        lab.key("i:key-a"),
    ];
    expected_keys.sort();
    assert_eq!(
        lab.keys().await,
        expected_keys,
        "the old hold, record, counter and events, and the marker, are gone"
    );
    assert_eq!(lab.hash(&registry).await, fields! {"42" => "sku-1"});
    let stock = lab.key("stock");
    assert_eq!(
        lab.hash(&stock).await,
        fields! {"on_hand" => 10, "held" => 3, "sold" => 2, "limit" => 4, "ttl_ms" => TTL,
        "max_ext" => 2, "epoch" => epoch, "sku_no" => SKU_NO}
    );
    let alice_key = lab.hold_key(alice);
    assert_eq!(
        lab.hash(&alice_key).await,
        fields! {"s" => "held", "c" => "alice", "q" => 1, "e" => now + TTL, "x" => 0,
        "t" => now, "a" => ""}
    );
    let bob_key = lab.hold_key(bob);
    assert_eq!(
        lab.hash(&bob_key).await,
        fields! {"s" => "held", "c" => "bob", "q" => 2, "e" => now + 5_000, "x" => 1,
        "t" => now - 1_000, "a" => ""}
    );
    assert_eq!(lab.pttl(&alice_key).await, -1);
    assert_eq!(lab.expiry_score(alice).await, Some(now + TTL));
    assert_eq!(lab.expiry_score(bob).await, Some(now + 5_000));
    assert_eq!(lab.expiry_score(old.hold).await, None);
    for (customer, units) in [("c:alice", "1"), ("c:bob", "2"), ("c:carol", "2")] {
        assert_eq!(
            lab.get(customer).await.as_deref(),
            Some(units),
            "{customer}"
        );
    }
    assert_eq!(
        lab.get("i:key-a").await,
        Some(format!("fp-a|H|{alice}|{}", now + TTL))
    );
    // The record lives out its window from admission, not from the rebuild.
    let idem_key = lab.key("i:key-a");
    assert_recent_ttl(lab.pttl(&idem_key).await, IDEM_TTL - 60_000);
    assert_eq!(lab.xlen().await, 0);
    assert_eq!(
        lab.groups().await,
        [(GROUP.to_owned(), "0-0".to_owned(), 0)]
    );

    // Open again: a replay of a rebuilt key, and a fresh admission in the
    // new epoch.
    let replay = lab
        .admit(&Admit {
            fingerprint: "fp-a".to_owned(),
            ..lab.admit_req("key-a", "alice", 1)
        })
        .await;
    assert_eq!(
        replay,
        Fenced::Open(Admission::Replayed(Box::new(Admission::Held {
            hold_id: alice,
            expires_at_ms: now + TTL
        })))
    );
    lab.admit_held(&lab.admit_req("key-new", "erin", 3)).await;
    assert_eq!(lab.counters().await, [10, 6, 2]);
    assert_eq!(lab.event_ids().await, [format!("{epoch}-0")]);
    lab.finish().await;
}
