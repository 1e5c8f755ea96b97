//! Hot-path Redis connection setup: which one admits faster?
//!
//! Runs the real admission script (`lua/admit.lua`, EVALSHA with NOSCRIPT
//! fallback) as the service builds it (`dropgate::gate::Admit`), with unique,
//! realistic keys per call (fresh hold id, event id, idempotency key and
//! customer `c-<n>`) against one SKU with effectively unlimited stock, at a
//! fixed concurrency for a fixed time, through:
//!
//! - `manager`: one shared `redis::aio::ConnectionManager` (cloned per task;
//!   one socket, concurrent calls pipelined onto it),
//! - `pool`: a deadpool-redis pool of 32 connections (each call checks one
//!   out; deadpool recycles it with an `UNWATCH`+`PING` round trip),
//! - `multiplexed`: one bare `redis::aio::MultiplexedConnection`.
//!
//! The setups alternate (A B C A B C ...) for 3 rounds each so machine drift
//! hits all of them; every round uses a fresh SKU whose keys are deleted
//! afterwards. It prints median calls/s over rounds, p50/p99 per-call latency
//! and the ratio of medians, and writes the same to
//! `target/bench/redis_connections.json`. Compare ratios, not absolute
//! numbers: they move with the machine.
//!
//! Run (needs a Redis; all keys live under a unique `bench<uuid>` prefix and
//! are deleted at the end):
//!
//! ```text
//! cargo bench --bench redis_connections
//! REDIS_URL=redis://127.0.0.1:6379/0 BENCH_CONCURRENCY=64 BENCH_SECONDS=3 \
//!     cargo bench --bench redis_connections
//! ```

use std::{
    env,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use dropgate::domain::{
    Admission, CustomerId, HoldId, HoldIdKey, IdempotencyKey, Quantity, SkuId, SkuSettings,
};
use dropgate::gate::{Admit, AdmitReply, Fenced, Script, SetSku, SkuChange, StockChange};
use redis::{
    AsyncConnectionConfig, Client, ScriptInvocation, Value,
    aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
};
use serde_json::json;
use tokio::task::JoinSet;
use uuid::Uuid;

const DEFAULT_URL: &str = "redis://127.0.0.1:6379/0";
const DEFAULT_CONCURRENCY: usize = 64;
const DEFAULT_SECONDS: f64 = 3.0;
const ROUNDS: usize = 3;
const POOL_SIZE: usize = 32;
/// Response/connect/checkout timeout, set explicitly on every setup.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Unmeasured run per setup first: loads the script, fills the pool.
const WARMUP: Duration = Duration::from_millis(500);
const ON_HAND: i64 = SkuSettings::MAX_ON_HAND;
/// The SKU's number in the (absent) ledger, carried in its hold ids.
const SKU_NO: u32 = 1;
const SCAN_BATCH: usize = 1000;

struct Settings {
    url: String,
    concurrency: usize,
    duration: Duration,
}

impl Settings {
    fn from_env() -> Result<Self> {
        let url = env::var("REDIS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
        let concurrency = match env::var("BENCH_CONCURRENCY") {
            Ok(v) => v.parse().context("BENCH_CONCURRENCY")?,
            Err(_) => DEFAULT_CONCURRENCY,
        };
        let seconds: f64 = match env::var("BENCH_SECONDS") {
            Ok(v) => v.parse().context("BENCH_SECONDS")?,
            Err(_) => DEFAULT_SECONDS,
        };
        if concurrency == 0 || !seconds.is_finite() || seconds <= 0.0 {
            bail!("BENCH_CONCURRENCY and BENCH_SECONDS must be positive");
        }
        Ok(Self {
            url,
            concurrency,
            duration: Duration::from_secs_f64(seconds),
        })
    }
}

/// One connection setup under test. Cloning is cheap: handles share state.
#[derive(Clone)]
enum Conn {
    Manager(ConnectionManager),
    Pool(deadpool_redis::Pool),
    Multiplexed(MultiplexedConnection),
}

impl Conn {
    fn name(&self) -> &'static str {
        match self {
            Conn::Manager(_) => "manager",
            Conn::Pool(_) => "pool",
            Conn::Multiplexed(_) => "multiplexed",
        }
    }

    async fn invoke(&mut self, call: &ScriptInvocation<'_>) -> Result<Value> {
        Ok(match self {
            Conn::Manager(c) => call.invoke_async(c).await?,
            Conn::Multiplexed(c) => call.invoke_async(c).await?,
            Conn::Pool(pool) => call.invoke_async(&mut pool.get().await?).await?,
        })
    }
}

async fn connect_manager(client: &Client) -> Result<Conn> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT));
    let conn = ConnectionManager::new_with_config(client.clone(), config).await?;
    Ok(Conn::Manager(conn))
}

fn connection_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT))
}

fn build_pool(url: &str) -> Result<Conn> {
    let manager = deadpool_redis::Manager::new_with_config(url, connection_config())?;
    let pool = deadpool_redis::Pool::builder(manager)
        .max_size(POOL_SIZE)
        .wait_timeout(Some(TIMEOUT))
        .create_timeout(Some(TIMEOUT))
        .runtime(deadpool_redis::Runtime::Tokio1)
        .build()?;
    Ok(Conn::Pool(pool))
}

async fn connect_multiplexed(client: &Client) -> Result<Conn> {
    let conn = client
        .get_multiplexed_async_connection_with_config(&connection_config())
        .await?;
    Ok(Conn::Multiplexed(conn))
}

/// One SKU of a round, under the run's key prefix.
struct Sku {
    id: SkuId,
    prefix: String,
}

impl Sku {
    fn new(prefix: &str, name: &str) -> Result<Self> {
        Ok(Self {
            id: SkuId::parse(name).map_err(|e| anyhow!("{e}"))?,
            prefix: prefix.to_owned(),
        })
    }

    /// Every key of the SKU, for the cleanup: the gate keeps all of them
    /// under `<prefix>:{<sku>}:`, one hash tag.
    fn pattern(&self) -> String {
        format!("{}:{{{}}}:*", self.prefix, self.id)
    }
}

/// Creates the SKU with the script the service uses for `PUT`.
async fn create_sku(admin: &mut MultiplexedConnection, sku: &Sku) -> Result<()> {
    let settings = SkuSettings {
        on_hand: ON_HAND,
        per_customer_limit: 0,
        hold_ttl_ms: SkuSettings::DEFAULT_HOLD_TTL_MS,
        max_extensions: SkuSettings::DEFAULT_MAX_EXTENSIONS,
    };
    let put = SetSku::new(
        sku.id.clone(),
        StockChange::Put {
            settings,
            sku_no: SKU_NO,
        },
        "bench",
        1,
    );
    let reply: Value = put.invocation(&sku.prefix).invoke_async(admin).await?;
    match put.decode(reply)? {
        Fenced::Open(SkuChange::Created(_)) => Ok(()),
        other => bail!("creating {}: {other:?}", sku.id),
    }
}

/// SCAN + DEL (not UNLINK: freeing must finish before the next round starts).
async fn delete_matching(admin: &mut MultiplexedConnection, pattern: &str) -> Result<u64> {
    let mut cursor = 0u64;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_BATCH)
            .query_async(admin)
            .await?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("DEL").arg(&keys).query_async(admin).await?;
            deleted += n;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

/// One admission with fresh ids, built by the service's own request type.
/// Returns whether the script answered `held`.
async fn admit_once(conn: &mut Conn, sku: &Sku, n: u64) -> Result<bool> {
    let one = Quantity::parse(1).map_err(|e| anyhow!("{e}"))?;
    let request = Admit::new(
        sku.id.clone(),
        // The scripts read nothing in the id; `n` keeps it unique.
        HoldId::issue(&HoldIdKey::new(b"bench"), n, SKU_NO, one),
        CustomerId::parse(&format!("c-{n}")).map_err(|e| anyhow!("{e}"))?,
        one,
        IdempotencyKey::parse(&Uuid::new_v4().simple().to_string()).map_err(|e| anyhow!("{e}"))?,
    );
    let reply = conn.invoke(&request.invocation(&sku.prefix)).await?;
    Ok(matches!(
        request.decode(reply)?,
        Fenced::Open(AdmitReply {
            admission: Admission::Held { .. },
            ..
        })
    ))
}

#[derive(Default)]
struct Tally {
    latencies_ns: Vec<u64>,
    held: u64,
    other: u64,
    errors: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies_ns.extend(other.latencies_ns);
        self.held += other.held;
        self.other += other.other;
        self.errors += other.errors;
    }

    fn calls(&self) -> u64 {
        self.held + self.other + self.errors
    }
}

/// One task: admit back to back until the deadline, timing every call.
async fn worker(
    mut conn: Conn,
    sku: Arc<Sku>,
    counter: Arc<AtomicU64>,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    while Instant::now() < deadline {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let outcome = admit_once(&mut conn, &sku, n).await;
        let elapsed = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        tally.latencies_ns.push(elapsed);
        match outcome {
            Ok(true) => tally.held += 1,
            Ok(false) => tally.other += 1,
            Err(_) => tally.errors += 1,
        }
    }
    tally
}

struct RoundResult {
    calls_per_s: f64,
    tally: Tally,
}

/// Runs `concurrency` workers for `duration` against a fresh SKU, then
/// deletes that SKU's keys (holds, idempotency records, stream, ...).
async fn run_round(
    conn: &Conn,
    admin: &mut MultiplexedConnection,
    sku: Sku,
    concurrency: usize,
    duration: Duration,
) -> Result<RoundResult> {
    create_sku(admin, &sku).await?;
    let sku = Arc::new(sku);
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let task = worker(
            conn.clone(),
            Arc::clone(&sku),
            Arc::clone(&counter),
            deadline,
        );
        tasks.spawn(task);
    }
    let mut tally = Tally::default();
    while let Some(done) = tasks.join_next().await {
        tally.merge(done.context("bench task panicked")?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    delete_matching(admin, &sku.pattern()).await?;
    if tally.held == 0 {
        bail!("{}: no call was admitted", conn.name());
    }
    Ok(RoundResult {
        calls_per_s: tally.calls() as f64 / elapsed,
        tally,
    })
}

struct Summary {
    setup: &'static str,
    rounds_calls_per_s: Vec<f64>,
    median_calls_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    held: u64,
    other: u64,
    errors: u64,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// Nearest-rank percentile of sorted nanoseconds, in microseconds.
fn percentile_us(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted_ns.len() as f64).ceil() as usize;
    sorted_ns[rank.clamp(1, sorted_ns.len()) - 1] as f64 / 1000.0
}

fn summarize(setup: &'static str, rounds: Vec<RoundResult>) -> Summary {
    let rounds_calls_per_s: Vec<f64> = rounds.iter().map(|r| r.calls_per_s).collect();
    let mut all = Tally::default();
    for round in rounds {
        all.merge(round.tally);
    }
    all.latencies_ns.sort_unstable();
    Summary {
        setup,
        median_calls_per_s: median(&rounds_calls_per_s),
        rounds_calls_per_s,
        p50_us: percentile_us(&all.latencies_ns, 0.50),
        p99_us: percentile_us(&all.latencies_ns, 0.99),
        held: all.held,
        other: all.other,
        errors: all.errors,
    }
}

fn ratio(summaries: &[Summary], numerator: &str, denominator: &str) -> Option<f64> {
    let find = |name: &str| summaries.iter().find(|s| s.setup == name);
    Some(find(numerator)?.median_calls_per_s / find(denominator)?.median_calls_per_s)
}

fn print_table(summaries: &[Summary], settings: &Settings) {
    println!(
        "\nadmit.lua, {} tasks, {:.1} s x {ROUNDS} rounds per setup (interleaved)",
        settings.concurrency,
        settings.duration.as_secs_f64()
    );
    println!(
        "{:<12} {:>12} {:>28} {:>10} {:>10} {:>7} {:>7}",
        "setup", "median/s", "rounds/s", "p50 us", "p99 us", "other", "errors"
    );
    for s in summaries {
        let rounds: Vec<String> = s
            .rounds_calls_per_s
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect();
        println!(
            "{:<12} {:>12.0} {:>28} {:>10.0} {:>10.0} {:>7} {:>7}",
            s.setup,
            s.median_calls_per_s,
            rounds.join(" "),
            s.p50_us,
            s.p99_us,
            s.other,
            s.errors
        );
    }
    for (num, den) in [("manager", "pool"), ("multiplexed", "pool")] {
        if let Some(r) = ratio(summaries, num, den) {
            println!("ratio of medians {num} / {den}: {r:.2}");
        }
    }
}

fn write_json(summaries: &[Summary], settings: &Settings, redis_version: &str) -> Result<PathBuf> {
    let setups: Vec<_> = summaries
        .iter()
        .map(|s| {
            json!({
                "setup": s.setup,
                "median_calls_per_s": s.median_calls_per_s,
                "rounds_calls_per_s": s.rounds_calls_per_s,
                "p50_us": s.p50_us,
                "p99_us": s.p99_us,
                "held": s.held,
                "other": s.other,
                "errors": s.errors,
            })
        })
        .collect();
    let report = json!({
        "bench": "redis_connections",
        "script": "lua/admit.lua",
        "redis_version": redis_version,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "concurrency": settings.concurrency,
        "seconds_per_round": settings.duration.as_secs_f64(),
        "rounds": ROUNDS,
        "pool_size": POOL_SIZE,
        "setups": setups,
        "ratio_manager_over_pool": ratio(summaries, "manager", "pool"),
        "ratio_multiplexed_over_pool": ratio(summaries, "multiplexed", "pool"),
    });
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("redis_connections.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

async fn redis_version(admin: &mut MultiplexedConnection) -> Result<String> {
    let info: String = redis::cmd("INFO").arg("server").query_async(admin).await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("unknown")
        .to_owned())
}

/// Warm-up, then ROUNDS interleaved rounds of every setup.
async fn measure(
    setups: &[Conn],
    admin: &mut MultiplexedConnection,
    prefix: &str,
    settings: &Settings,
) -> Result<Vec<Summary>> {
    for conn in setups {
        let sku = Sku::new(prefix, &format!("warm-{}", conn.name()))?;
        run_round(conn, admin, sku, settings.concurrency, WARMUP).await?;
    }
    let mut results: Vec<Vec<RoundResult>> = setups.iter().map(|_| Vec::new()).collect();
    for round in 0..ROUNDS {
        for (conn, rounds) in setups.iter().zip(&mut results) {
            let sku = Sku::new(prefix, &format!("hot-{}-{round}", conn.name()))?;
            let (concurrency, duration) = (settings.concurrency, settings.duration);
            let result = run_round(conn, admin, sku, concurrency, duration).await?;
            eprintln!(
                "round {round} {:<12} {:>9.0} calls/s",
                conn.name(),
                result.calls_per_s
            );
            rounds.push(result);
        }
    }
    Ok(setups
        .iter()
        .zip(results)
        .map(|(conn, rounds)| summarize(conn.name(), rounds))
        .collect())
}

#[tokio::main]
async fn main() -> Result<()> {
    let settings = Settings::from_env()?;
    let client = Client::open(settings.url.as_str())?;
    let mut admin = client
        .get_multiplexed_async_connection_with_config(&connection_config())
        .await
        .with_context(|| format!("connecting to {}", settings.url))?;
    let version = redis_version(&mut admin).await?;
    let prefix = format!("bench{}", Uuid::new_v4().simple());

    let setups = vec![
        connect_manager(&client).await?,
        build_pool(&settings.url)?,
        connect_multiplexed(&client).await?,
    ];
    let measured = measure(&setups, &mut admin, &prefix, &settings).await;
    // Clean up even when measuring failed half way.
    let cleaned = delete_matching(&mut admin, &format!("{prefix}:*")).await;
    let summaries = measured?;
    cleaned?;

    print_table(&summaries, &settings);
    let path = write_json(&summaries, &settings, &version)?;
    println!(
        "redis {version}, {} cpus; wrote {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        path.display()
    );
    Ok(())
}
