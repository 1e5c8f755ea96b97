//! Direct tests of the Lua scripts in `lua/`, independent of the Rust gate:
//! each test crafts its keys under a fresh prefix in the real Redis, runs a
//! script the way `src/gate` does (hold_lib.lua prepended where the gate
//! prepends it), and checks the reply and every key it touched with exact
//! numbers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamInfoGroupsReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Script, ScriptInvocation, Value};
use std::collections::BTreeMap;
use std::sync::LazyLock;
use uuid::Uuid;

const REDIS_URL: &str = "redis://127.0.0.1:6379/0";
const HOLD_LIB: &str = include_str!("../lua/hold_lib.lua");
const GROUP: &str = "ledger";
/// Scripts take the clock as an argument, so every test runs at a fixed now.
const NOW: i64 = 1_700_000_000_000;
const EPOCH: i64 = 7;
const SKU_NO: i64 = 42;
const TTL: i64 = 60_000;
const IDEM_TTL: i64 = 86_400_000;
/// hold_lib.lua's SETTLED_HOLD_TTL_MS.
const SETTLED_TTL: i64 = 3_600_000;
const NO_BACKLOG_LIMIT: i64 = 1_000_000;

fn with_hold_lib(body: &str) -> Script {
    Script::new(&format!("{HOLD_LIB}\n{body}"))
}

static SET_SKU: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/set_sku.lua")));
static ADMIT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/admit.lua")));
static CONFIRM: LazyLock<Script> =
    LazyLock::new(|| with_hold_lib(include_str!("../lua/confirm.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| with_hold_lib(include_str!("../lua/release.lua")));
static EXTEND: LazyLock<Script> =
    LazyLock::new(|| with_hold_lib(include_str!("../lua/extend.lua")));
static EXPIRE: LazyLock<Script> =
    LazyLock::new(|| with_hold_lib(include_str!("../lua/expire.lua")));
static TRIM: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/trim.lua")));

/// `strs![a, 1, b]`: a script reply as text, for exact comparison.
macro_rules! strs {
    ($($v:expr),* $(,)?) => {
        vec![$($v.to_string()),*]
    };
}

/// `fields! {"t" => "admit", "q" => 1}`: a hash or stream entry as text.
macro_rules! fields {
    ($($k:literal => $v:expr),* $(,)?) => {
        BTreeMap::from([$(($k.to_owned(), $v.to_string())),*])
    };
}

type Fields = BTreeMap<String, String>;

fn text(value: &Value) -> String {
    match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

fn fresh_id() -> String {
    Uuid::new_v4().to_string()
}

fn stream_id(seq: u64) -> String {
    format!("{EPOCH}-{seq}")
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    on_hand: i64,
    limit: i64,
    ttl_ms: i64,
    max_ext: i64,
}

const SETTINGS: Settings = Settings {
    on_hand: 10,
    limit: 0,
    ttl_ms: TTL,
    max_ext: 2,
};

/// Arguments of set_sku.lua.
struct SetSku {
    mode: &'static str,
    amount: i64,
    settings: Option<Settings>,
    epoch: i64,
    sku_no: i64,
}

fn put(settings: Settings) -> SetSku {
    SetSku {
        mode: "put",
        amount: settings.on_hand,
        settings: Some(settings),
        epoch: EPOCH,
        sku_no: SKU_NO,
    }
}

fn adjust(delta: i64) -> SetSku {
    SetSku {
        mode: "adjust",
        amount: delta,
        settings: None,
        epoch: EPOCH,
        sku_no: 0,
    }
}

/// Arguments of admit.lua.
struct Admit<'a> {
    key: &'a str,
    customer: &'a str,
    qty: i64,
    fingerprint: &'a str,
    now: i64,
    backlog_limit: i64,
}

fn admit_req<'a>(key: &'a str, customer: &'a str, qty: i64) -> Admit<'a> {
    Admit {
        key,
        customer,
        qty,
        fingerprint: "fp-1",
        now: NOW,
        backlog_limit: NO_BACKLOG_LIMIT,
    }
}

/// One script call: its reply, and the ids it was given.
struct Call {
    reply: Vec<String>,
    event: String,
    hold: String,
}

/// A live hold as admitted, to build the replies of the transition scripts.
#[derive(Debug, Clone)]
struct Held {
    hold: String,
    admit_event: String,
    customer: String,
    qty: i64,
    expires: i64,
    extensions: i64,
    created: i64,
}

impl Held {
    /// confirm/release/extend reply: outcome, the hold, the event position.
    fn reply(&self, outcome: &str, state: &str, position: &str) -> Vec<String> {
        strs![
            outcome,
            state,
            self.customer,
            self.qty,
            self.expires,
            self.extensions,
            self.created,
            position
        ]
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

/// One test's corner of Redis: a unique key prefix and one SKU under it.
/// Its keys are deleted by `finish`, or on drop if the test fails first.
struct Lab {
    conn: MultiplexedConnection,
    prefix: String,
    base: String,
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
        let base = format!("{prefix}:{{sku-1}}:");
        Self {
            conn,
            prefix,
            base,
            cleaned: false,
        }
    }

    /// `<prefix>:{sku-1}:<suffix>`
    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.base)
    }

    fn hold_key(&self, hold: &str) -> String {
        self.key(&format!("h:{hold}"))
    }

    async fn run(&mut self, invocation: &ScriptInvocation<'_>) -> Vec<String> {
        let value: Value = invocation
            .invoke_async(&mut self.conn)
            .await
            .expect("the script runs");
        match value {
            Value::Array(items) => items.iter().map(text).collect(),
            other => vec![text(&other)],
        }
    }

    // ---- the scripts, called as src/gate calls them ----

    async fn set_sku(&mut self, args: SetSku) -> Call {
        let event = fresh_id();
        let settings = args
            .settings
            .map(|s| strs![s.limit, s.ttl_ms, s.max_ext])
            .unwrap_or_else(|| strs!["", "", ""]);
        let mut invocation = SET_SKU.prepare_invoke();
        invocation
            .key(self.key("stock"))
            .key(self.key("events"))
            .arg(args.mode)
            .arg(args.amount)
            .arg(settings)
            .arg(&event)
            .arg(NOW)
            .arg(args.epoch)
            .arg(args.sku_no)
            .arg("stocktake")
            .arg(GROUP);
        let reply = self.run(&invocation).await;
        Call {
            reply,
            event,
            hold: String::new(),
        }
    }

    async fn create(&mut self, settings: Settings) {
        let created = self.set_sku(put(settings)).await;
        assert_eq!(created.reply[0], "created");
    }

    async fn admit(&mut self, req: Admit<'_>) -> Call {
        let (hold, event) = (fresh_id(), fresh_id());
        let mut invocation = ADMIT.prepare_invoke();
        invocation
            .key(self.key("stock"))
            .key(self.key(&format!("i:{}", req.key)))
            .key(self.key(&format!("c:{}", req.customer)))
            .key(self.hold_key(&hold))
            .key(self.key("expiry"))
            .key(self.key("events"))
            .arg(&hold)
            .arg(&event)
            .arg(req.customer)
            .arg(req.qty)
            .arg(req.now)
            .arg(req.fingerprint)
            .arg(IDEM_TTL)
            .arg(req.key)
            .arg(req.backlog_limit);
        let reply = self.run(&invocation).await;
        Call { reply, event, hold }
    }

    /// Admits a hold (fresh idempotency key) that must be held.
    async fn hold_for(&mut self, customer: &str, qty: i64, now: i64) -> Held {
        let key = fresh_id();
        let call = self
            .admit(Admit {
                now,
                ..admit_req(&key, customer, qty)
            })
            .await;
        let expires = now + TTL;
        assert_eq!(call.reply, strs!["held", call.hold, expires]);
        Held {
            hold: call.hold,
            admit_event: call.event,
            customer: customer.to_owned(),
            qty,
            expires,
            extensions: 0,
            created: now,
        }
    }

    /// confirm.lua, release.lua or extend.lua.
    async fn transition(&mut self, script: &Script, hold: &str, now: i64) -> Call {
        let event = fresh_id();
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.hold_key(hold))
            .arg(&self.base)
            .arg(hold)
            .arg(&event)
            .arg(now);
        let reply = self.run(&invocation).await;
        Call {
            reply,
            event,
            hold: hold.to_owned(),
        }
    }

    /// expire.lua with `batch` event ids; returns the reply and the ids.
    async fn expire(&mut self, now: i64, batch: usize) -> (Vec<String>, Vec<String>) {
        let events: Vec<String> = (0..batch).map(|_| fresh_id()).collect();
        let mut invocation = EXPIRE.prepare_invoke();
        invocation
            .key(self.key("expiry"))
            .arg(&self.base)
            .arg(now)
            .arg(&events);
        (self.run(&invocation).await, events)
    }

    async fn trim(&mut self) -> Vec<String> {
        let mut invocation = TRIM.prepare_invoke();
        invocation.key(self.key("events")).arg(GROUP);
        self.run(&invocation).await
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

    async fn expiry_score(&mut self, hold: &str) -> Option<i64> {
        let key = self.key("expiry");
        self.conn.zscore(key, hold).await.expect("ZSCORE")
    }

    async fn zadd(&mut self, hold: &str, score: i64) {
        let key = self.key("expiry");
        let _: i64 = self.conn.zadd(key, hold, score).await.expect("ZADD");
    }

    async fn events(&mut self) -> Vec<(String, Fields)> {
        let key = self.key("events");
        self.conn.xrange_all(key).await.expect("XRANGE")
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

    /// XREADGROUP of everything not yet delivered; returns the ids.
    async fn read_group(&mut self) -> Vec<String> {
        let key = self.key("events");
        let options = StreamReadOptions::default()
            .group(GROUP, "worker-1")
            .count(100);
        let reply: StreamReadReply = self
            .conn
            .xread_options(&[key], &[">"], &options)
            .await
            .expect("XREADGROUP");
        reply
            .keys
            .into_iter()
            .flat_map(|k| k.ids)
            .map(|entry| entry.id)
            .collect()
    }

    async fn ack(&mut self, ids: &[&str]) {
        let key = self.key("events");
        let _: i64 = self.conn.xack(key, GROUP, ids).await.expect("XACK");
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
    let settings = Settings {
        on_hand: 10,
        limit: 2,
        ttl_ms: 60_000,
        max_ext: 1,
    };

    let call = lab.set_sku(put(settings)).await;

    assert_eq!(call.reply, strs!["created", 10, 0, 0, 2, 60_000, 1]);
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
            fields! {"t" => "adjust", "i" => call.event, "m" => NOW, "d" => 10, "l" => 2,
            "ttl" => 60_000, "x" => 1, "r" => "stocktake"}
        )]
    );
    let events = lab.key("events");
    let groups: StreamInfoGroupsReply = lab.conn.xinfo_groups(events).await.expect("XINFO");
    let groups: Vec<_> = groups
        .groups
        .iter()
        .map(|g| (g.name.as_str(), g.last_delivered_id.as_str(), g.pending))
        .collect();
    assert_eq!(groups, [(GROUP, "0-0", 0)]);
    lab.finish().await;
}

#[tokio::test]
async fn set_sku_put_replaces_the_settings_and_keeps_epoch_and_sku_number() {
    let mut lab = Lab::new().await;
    lab.create(SETTINGS).await;
    let settings = Settings {
        on_hand: 15,
        limit: 3,
        ttl_ms: 30_000,
        max_ext: 4,
    };

    let call = lab
        .set_sku(SetSku {
            epoch: EPOCH + 2,
            sku_no: SKU_NO + 1,
            ..put(settings)
        })
        .await;

    assert_eq!(call.reply, strs!["updated", 15, 0, 0, 3, 30_000, 4]);
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
            fields! {"t" => "adjust", "i" => call.event, "m" => NOW, "d" => 5, "l" => 3,
            "ttl" => 30_000, "x" => 4, "r" => "stocktake"}
        )
    );
    lab.finish().await;
}

#[tokio::test]
async fn set_sku_adjust_moves_on_hand_by_the_delta_and_keeps_the_settings() {
    let mut lab = Lab::new().await;
    lab.create(SETTINGS).await;
    lab.hold_for("alice", 2, NOW).await;

    let call = lab.set_sku(adjust(-3)).await;

    assert_eq!(call.reply, strs!["updated", 7, 2, 0, 0, TTL, 2]);
    assert_eq!(lab.counters().await, [7, 2, 0]);
    assert_eq!(
        lab.last_event().await,
        (
            stream_id(2),
            fields! {"t" => "adjust", "i" => call.event, "m" => NOW, "d" => -3, "l" => 0,
            "ttl" => TTL, "x" => 2, "r" => "stocktake"}
        )
    );
    let call = lab.set_sku(adjust(5)).await;
    assert_eq!(call.reply, strs!["updated", 12, 2, 0, 0, TTL, 2]);
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

    let by_delta = lab.set_sku(adjust(-4)).await;
    let by_put = lab
        .set_sku(put(Settings {
            on_hand: 6,
            limit: 9,
            ..SETTINGS
        }))
        .await;

    assert_eq!(by_delta.reply, strs!["conflict", 6, 3, 4]);
    assert_eq!(by_put.reply, strs!["conflict", 6, 3, 4]);
    assert_eq!(
        lab.snapshot().await,
        before,
        "stock hash and stream unchanged"
    );
    assert_eq!(lab.xlen().await, 1);
    // Exactly held + sold is allowed.
    let call = lab.set_sku(adjust(-3)).await;
    assert_eq!(call.reply, strs!["updated", 7, 3, 4, 0, TTL, 2]);
    lab.finish().await;
}

#[tokio::test]
async fn set_sku_refuses_a_negative_creation_and_adjusting_a_missing_sku() {
    let mut lab = Lab::new().await;

    let negative = lab
        .set_sku(put(Settings {
            on_hand: -1,
            ..SETTINGS
        }))
        .await;
    let missing = lab.set_sku(adjust(5)).await;

    assert_eq!(negative.reply, strs!["conflict", -1, 0, 0]);
    assert_eq!(missing.reply, strs!["no_sku"]);
    assert_eq!(lab.keys().await, Vec::<String>::new(), "nothing written");
    lab.finish().await;
}

// ---------------------------------------------------------------- admit

#[tokio::test]
async fn admit_holds_units_and_writes_hold_expiry_counter_record_and_event() {
    let mut lab = Lab::new().await;
    lab.create(SETTINGS).await;

    let call = lab.admit(admit_req("key-1", "alice", 2)).await;

    let expires = NOW + TTL;
    assert_eq!(call.reply, strs!["held", call.hold, expires]);
    assert_eq!(lab.counters().await, [10, 2, 0]);
    let hold_key = lab.hold_key(&call.hold);
    assert_eq!(
        lab.hash(&hold_key).await,
        fields! {"s" => "held", "c" => "alice", "q" => 2, "e" => expires, "x" => 0, "t" => NOW,
        "a" => call.event}
    );
    assert_eq!(lab.pttl(&hold_key).await, -1, "a live hold does not expire");
    assert_eq!(lab.expiry_score(&call.hold).await, Some(expires));
    assert_eq!(lab.get("c:alice").await.as_deref(), Some("2"));
    assert_eq!(
        lab.get("i:key-1").await,
        Some(format!("fp-1|H|{}|{expires}", call.hold))
    );
    let idem_key = lab.key("i:key-1");
    assert_recent_ttl(lab.pttl(&idem_key).await, IDEM_TTL);
    assert_eq!(
        lab.last_event().await,
        (
            stream_id(1),
            fields! {"t" => "admit", "i" => call.event, "h" => call.hold, "c" => "alice", "q" => 2,
            "m" => NOW, "e" => expires, "k" => "key-1", "f" => "fp-1"}
        )
    );
    lab.finish().await;
}

#[tokio::test]
async fn admit_replays_the_same_body_and_refuses_another_body_without_writing() {
    let mut lab = Lab::new().await;
    lab.create(SETTINGS).await;
    let first = lab.admit(admit_req("key-1", "alice", 1)).await;
    let before = lab.snapshot().await;

    let replay = lab
        .admit(Admit {
            now: NOW + 5_000,
            ..admit_req("key-1", "alice", 1)
        })
        .await;
    let reused = lab
        .admit(Admit {
            fingerprint: "fp-2",
            ..admit_req("key-1", "alice", 1)
        })
        .await;

    assert_eq!(
        replay.reply,
        strs!["replay", format!("H|{}|{}", first.hold, NOW + TTL)]
    );
    assert_eq!(reused.reply, strs!["reused"]);
    assert_eq!(lab.snapshot().await, before, "no second hold, no event");
    assert_eq!(lab.counters().await, [10, 1, 0]);
    assert_eq!(lab.xlen().await, 2);
    lab.finish().await;
}

#[tokio::test]
async fn admit_sold_out_gives_retry_after_only_while_a_hold_is_live() {
    let mut lab = Lab::new().await;
    lab.create(Settings {
        on_hand: 1,
        ..SETTINGS
    })
    .await;

    let nothing_held = lab.admit(admit_req("key-bob", "bob", 2)).await;
    assert_eq!(nothing_held.reply, strs!["sold_out", 0]);
    assert_eq!(lab.get("i:key-bob").await.as_deref(), Some("fp-1|S|0"));

    let held = lab.hold_for("alice", 1, NOW).await;
    let mut expected = lab.snapshot().await;
    let soon = lab
        .admit(Admit {
            now: NOW + 1_000,
            ..admit_req("key-carol", "carol", 1)
        })
        .await;
    let almost = lab
        .admit(Admit {
            now: NOW + TTL - 500,
            ..admit_req("key-dave", "dave", 1)
        })
        .await;

    assert_eq!(soon.reply, strs!["sold_out", TTL - 1_000]);
    assert_eq!(almost.reply, strs!["sold_out", 1_000], "at least a second");
    let idem_key = lab.key("i:key-carol");
    assert_recent_ttl(lab.pttl(&idem_key).await, IDEM_TTL);
    // Only the two outcome records were written.
    expected.insert(idem_key, format!("fp-1|S|{}", TTL - 1_000));
    expected.insert(lab.key("i:key-dave"), "fp-1|S|1000".to_owned());
    assert_eq!(lab.snapshot().await, expected);
    assert_eq!(lab.counters().await, [1, 1, 0]);

    // Held units without an expiry entry: a second, not zero.
    let expiry = lab.key("expiry");
    let _: i64 = lab.conn.zrem(expiry, &held.hold).await.expect("ZREM");
    let unindexed = lab.admit(admit_req("key-erin", "erin", 1)).await;
    assert_eq!(unindexed.reply, strs!["sold_out", 1_000]);
    lab.finish().await;
}

#[tokio::test]
async fn admit_refuses_beyond_the_per_customer_limit_and_stores_the_outcome() {
    let mut lab = Lab::new().await;
    lab.create(Settings {
        limit: 2,
        ..SETTINGS
    })
    .await;
    lab.hold_for("alice", 2, NOW).await;
    let mut expected = lab.snapshot().await;

    let call = lab.admit(admit_req("key-more", "alice", 1)).await;

    assert_eq!(call.reply, strs!["limit", 2, 2]);
    let idem_key = lab.key("i:key-more");
    assert_recent_ttl(lab.pttl(&idem_key).await, IDEM_TTL);
    expected.insert(idem_key, "fp-1|L|2|2".to_owned());
    assert_eq!(lab.snapshot().await, expected);
    // The limit is per customer.
    lab.hold_for("bob", 2, NOW).await;
    assert_eq!(lab.counters().await, [10, 4, 0]);
    lab.finish().await;
}

#[tokio::test]
async fn admit_for_a_missing_sku_writes_nothing() {
    let mut lab = Lab::new().await;

    let call = lab.admit(admit_req("key-1", "alice", 1)).await;

    assert_eq!(call.reply, strs!["no_sku"]);
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
    lab.hold_for("alice", 1, NOW).await;
    let before = lab.snapshot().await;

    let call = lab
        .admit(Admit {
            backlog_limit: 1,
            ..admit_req("key-2", "bob", 1)
        })
        .await;

    assert_eq!(call.reply, strs!["backlog", 2]);
    assert_eq!(lab.snapshot().await, before, "nothing written");
    let call = lab
        .admit(Admit {
            backlog_limit: 3,
            ..admit_req("key-2", "bob", 1)
        })
        .await;
    assert_eq!(call.reply[0], "held");
    lab.finish().await;
}

// ---------------------------------------------------------------- confirm / release

/// Checks a hold just settled by a transition: state, TTL, expiry entry gone,
/// and the stream's last entry.
async fn assert_settled(
    lab: &mut Lab,
    call: &Call,
    held: &Held,
    state: &str,
    kind: &str,
    now: i64,
) {
    let hold_key = lab.hold_key(&held.hold);
    assert_eq!(lab.hash(&hold_key).await, held.fields(state));
    assert_recent_ttl(lab.pttl(&hold_key).await, SETTLED_TTL);
    assert_eq!(lab.expiry_score(&held.hold).await, None);
    let (position, event) = lab.last_event().await;
    assert_eq!(call.reply.last(), Some(&position), "reply names the event");
    assert_eq!(
        event,
        fields! {"t" => kind, "i" => call.event, "h" => held.hold, "c" => held.customer,
        "q" => held.qty, "m" => now}
    );
}

/// Every transition script on `held` at `now` answers `outcome` with no
/// position and changes nothing.
async fn assert_all_inert(lab: &mut Lab, held: &Held, now: i64, expected: [(&Script, &str); 3]) {
    let before = lab.snapshot().await;
    for (script, outcome) in expected {
        let state = lab.hash(&lab.hold_key(&held.hold)).await["s"].clone();
        let call = lab.transition(script, &held.hold, now).await;
        assert_eq!(call.reply, held.reply(outcome, &state, ""));
    }
    assert_eq!(lab.snapshot().await, before);
}

#[tokio::test]
async fn confirm_moves_held_to_sold_once() {
    let mut lab = Lab::new().await;
    lab.create(SETTINGS).await;
    let held = lab.hold_for("alice", 2, NOW).await;

    let call = lab.transition(&CONFIRM, &held.hold, NOW + 1_000).await;

    assert_eq!(call.reply, held.reply("done", "confirmed", &stream_id(2)));
    assert_eq!(lab.counters().await, [10, 0, 2]);
    assert_eq!(
        lab.get("c:alice").await.as_deref(),
        Some("2"),
        "bought units still count toward the limit"
    );
    assert_settled(&mut lab, &call, &held, "confirmed", "confirm", NOW + 1_000).await;
    assert_all_inert(
        &mut lab,
        &held,
        NOW + 2_000,
        [
            (&CONFIRM, "same"),
            (&RELEASE, "conflict"),
            (&EXTEND, "conflict"),
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
    let small = lab.hold_for("alice", 1, NOW).await;
    let large = lab.hold_for("alice", 2, NOW).await;

    let call = lab.transition(&RELEASE, &large.hold, NOW + 1_000).await;

    assert_eq!(call.reply, large.reply("done", "released", &stream_id(3)));
    assert_eq!(lab.counters().await, [10, 1, 0]);
    assert_eq!(lab.get("c:alice").await.as_deref(), Some("1"));
    assert_settled(&mut lab, &call, &large, "released", "release", NOW + 1_000).await;

    let call = lab.transition(&RELEASE, &small.hold, NOW + 2_000).await;
    assert_eq!(call.reply, small.reply("done", "released", &stream_id(4)));
    assert_eq!(lab.counters().await, [10, 0, 0]);
    assert_eq!(lab.get("c:alice").await, None, "deleted at zero");
    assert_all_inert(
        &mut lab,
        &small,
        NOW + 3_000,
        [
            (&RELEASE, "same"),
            (&CONFIRM, "conflict"),
            (&EXTEND, "conflict"),
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
    let hold = fresh_id();

    for script in [&*CONFIRM, &*RELEASE, &*EXTEND] {
        let call = lab.transition(script, &hold, NOW).await;
        assert_eq!(call.reply, strs!["no_hold"]);
    }

    assert_eq!(lab.snapshot().await, before);
    lab.finish().await;
}

#[tokio::test]
async fn a_hold_past_its_expiry_is_expired_by_whoever_touches_it_first_once() {
    for first in [&*CONFIRM, &*RELEASE, &*EXTEND] {
        let mut lab = Lab::new().await;
        lab.create(SETTINGS).await;
        let held = lab.hold_for("alice", 2, NOW).await;
        let late = held.expires + 1;

        let call = lab.transition(first, &held.hold, late).await;

        assert_eq!(call.reply, held.reply("conflict", "expired", &stream_id(2)));
        assert_eq!(lab.counters().await, [10, 0, 0], "units returned");
        assert_eq!(lab.get("c:alice").await, None);
        assert_settled(&mut lab, &call, &held, "expired", "expire", late).await;
        let before = lab.snapshot().await;
        assert_all_inert(
            &mut lab,
            &held,
            late + 1,
            [
                (&RELEASE, "conflict"),
                (&CONFIRM, "conflict"),
                (&EXTEND, "conflict"),
            ],
        )
        .await;
        let (reply, _) = lab.expire(late + 1, 5).await;
        assert_eq!(reply, strs![0, 0]);
        assert_eq!(lab.snapshot().await, before, "returned exactly once");
        lab.finish().await;
    }
}

// ---------------------------------------------------------------- extend

#[tokio::test]
async fn extend_moves_the_expiry_up_to_max_extensions_times() {
    let mut lab = Lab::new().await;
    lab.create(SETTINGS).await;
    let held = lab.hold_for("alice", 1, NOW).await;

    let mut extended = held.clone();
    // The second extension comes after the original expiry: the first one
    // really moved the deadline.
    for (n, now) in [(1, NOW + 10_000), (2, NOW + TTL + 5_000)] {
        let call = lab.transition(&EXTEND, &held.hold, now).await;
        extended = held.with_expiry(now + TTL, n);
        assert_eq!(
            call.reply,
            extended.reply("done", "held", &stream_id(1 + n as u64))
        );
        let hold_key = lab.hold_key(&held.hold);
        assert_eq!(lab.hash(&hold_key).await, extended.fields("held"));
        assert_eq!(lab.expiry_score(&held.hold).await, Some(now + TTL));
        assert_eq!(
            lab.last_event().await.1,
            fields! {"t" => "extend", "i" => call.event, "h" => held.hold, "c" => "alice",
            "q" => 1, "m" => now, "e" => now + TTL}
        );
    }
    assert_eq!(lab.counters().await, [10, 1, 0]);

    let before = lab.snapshot().await;
    let call = lab.transition(&EXTEND, &held.hold, NOW + TTL + 6_000).await;
    assert_eq!(call.reply, extended.reply("ext_limit", "held", ""));
    assert_eq!(lab.snapshot().await, before);

    lab.transition(&RELEASE, &held.hold, NOW + TTL + 7_000)
        .await;
    let call = lab.transition(&EXTEND, &held.hold, NOW + TTL + 8_000).await;
    assert_eq!(call.reply, extended.reply("conflict", "released", ""));
    lab.finish().await;
}

// ---------------------------------------------------------------- expire

#[tokio::test]
async fn expire_expires_only_due_holds_and_only_once() {
    let mut lab = Lab::new().await;
    lab.create(SETTINGS).await;
    let a = lab.hold_for("alice", 1, NOW).await;
    let b = lab.hold_for("bob", 2, NOW + 5_000).await;
    let c = lab.hold_for("carol", 3, NOW + 30_000).await;
    let now = NOW + TTL + 10_000;

    let (reply, ids) = lab.expire(now, 10).await;

    assert_eq!(reply, strs![2, 0]);
    assert_eq!(lab.counters().await, [10, 3, 0]);
    assert_eq!(
        (lab.get("c:alice").await, lab.get("c:bob").await),
        (None, None)
    );
    assert_eq!(lab.get("c:carol").await.as_deref(), Some("3"));
    let hold_key = lab.hold_key(&c.hold);
    assert_eq!(lab.hash(&hold_key).await, c.fields("held"));
    assert_eq!(lab.pttl(&hold_key).await, -1);
    assert_eq!(lab.expiry_score(&c.hold).await, Some(c.expires));
    let expired: Vec<_> = lab.events().await.split_off(4);
    let expected: Vec<_> = [(&a, &ids[0]), (&b, &ids[1])]
        .iter()
        .enumerate()
        .map(|(n, (held, id))| {
            (
                stream_id(4 + n as u64),
                fields! {"t" => "expire", "i" => id, "h" => held.hold, "c" => held.customer,
                "q" => held.qty, "m" => now},
            )
        })
        .collect();
    assert_eq!(expired, expected);
    for held in [&a, &b] {
        let hold_key = lab.hold_key(&held.hold);
        assert_eq!(lab.hash(&hold_key).await, held.fields("expired"));
        assert_recent_ttl(lab.pttl(&hold_key).await, SETTLED_TTL);
    }

    let before = lab.snapshot().await;
    let (reply, _) = lab.expire(now, 10).await;
    assert_eq!(reply, strs![0, 0]);
    assert_eq!(lab.snapshot().await, before);
    lab.finish().await;
}

#[tokio::test]
async fn expire_handles_at_most_one_hold_per_event_id() {
    let mut lab = Lab::new().await;
    lab.create(SETTINGS).await;
    let mut holds = Vec::new();
    for n in 0..3 {
        holds.push(lab.hold_for("alice", 1, NOW + n).await);
    }
    let now = NOW + TTL + 10;

    let (first, first_ids) = lab.expire(now, 2).await;
    assert_eq!(first, strs![2, 1]);
    assert_eq!(lab.counters().await, [10, 1, 0]);
    let (second, second_ids) = lab.expire(now, 2).await;
    assert_eq!(second, strs![1, 0]);
    assert_eq!(lab.counters().await, [10, 0, 0]);
    assert_eq!(lab.get("c:alice").await, None);

    let expired: Vec<_> = lab
        .events()
        .await
        .split_off(4)
        .into_iter()
        .map(|(_, e)| (e["h"].clone(), e["i"].clone()))
        .collect();
    let expected: Vec<_> = holds
        .iter()
        .map(|h| h.hold.clone())
        .zip(first_ids.into_iter().chain(second_ids.into_iter().take(1)))
        .collect();
    assert_eq!(expired, expected, "earliest first, one event id each");
    let (third, _) = lab.expire(now, 2).await;
    assert_eq!(third, strs![0, 0]);
    lab.finish().await;
}

#[tokio::test]
async fn expire_drops_stale_entries_of_settled_or_missing_holds_without_counting() {
    let mut lab = Lab::new().await;
    lab.create(SETTINGS).await;
    let confirmed = lab.hold_for("alice", 1, NOW).await;
    let released = lab.hold_for("bob", 1, NOW).await;
    // Due before the stale entries of the settled holds, after the missing one.
    let live = lab.hold_for("carol", 1, NOW - 10_000).await;
    lab.transition(&CONFIRM, &confirmed.hold, NOW + 1).await;
    lab.transition(&RELEASE, &released.hold, NOW + 1).await;
    lab.zadd(&confirmed.hold, confirmed.expires).await;
    lab.zadd(&released.hold, released.expires).await;
    lab.zadd(&fresh_id(), NOW).await;
    assert_eq!(lab.counters().await, [10, 1, 1]);
    let events_before = lab.xlen().await;
    let hold_key = lab.hold_key(&confirmed.hold);
    let confirmed_before = lab.hash(&hold_key).await;

    let (reply, ids) = lab.expire(NOW + TTL + 1, 10).await;

    assert_eq!(reply, strs![1, 0]);
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
        fields! {"t" => "expire", "i" => ids[1], "h" => live.hold, "c" => "carol", "q" => 1,
        "m" => NOW + TTL + 1}
    );
    lab.finish().await;
}

// ---------------------------------------------------------------- trim

#[tokio::test]
async fn trim_drops_acknowledged_entries_and_keeps_pending_and_undelivered_ones() {
    let mut lab = Lab::new().await;
    assert_eq!(lab.trim().await, strs![0], "no stream, no group");
    lab.create(SETTINGS).await;
    lab.hold_for("alice", 1, NOW).await;
    lab.hold_for("bob", 1, NOW).await;
    let ids = [0, 1, 2, 3].map(stream_id);
    let [e0, e1, e2, e3] = ids.each_ref().map(String::as_str);
    assert_eq!(lab.trim().await, strs![0], "nothing delivered yet");

    assert_eq!(lab.read_group().await, [e0, e1, e2]);
    assert_eq!(lab.trim().await, strs![0], "all pending");
    lab.ack(&[e1]).await;
    assert_eq!(lab.trim().await, strs![0], "the oldest is still pending");
    lab.ack(&[e0]).await;
    assert_eq!(lab.trim().await, strs![2]);
    assert_eq!(lab.event_ids().await, [e2]);

    lab.hold_for("carol", 1, NOW).await;
    lab.ack(&[e2]).await;
    assert_eq!(lab.trim().await, strs![1]);
    assert_eq!(lab.event_ids().await, [e3], "undelivered is kept");

    assert_eq!(lab.read_group().await, [e3]);
    assert_eq!(lab.trim().await, strs![0]);
    lab.ack(&[e3]).await;
    assert_eq!(lab.trim().await, strs![1]);
    assert_eq!(lab.xlen().await, 0);
    lab.finish().await;
}
