//! A reachable store that cannot serve: Redis out of memory, demoted to a
//! replica by a failover, loading its dataset, busy in a script. Each must
//! read as unavailability (503 `unavailable` with `Retry-After`, `/readyz`
//! 503 while it lasts), change nothing, and pass once the store recovers.
//! Every test runs its own redis-server(s) in a temporary directory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::RedisServer;
use common::{TestApp, assert_problem, body, spawn_app_with, test_config};
use futures::future::join_all;
use serde_json::{Value, json};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

const SKU: &str = "drop";

/// One command on a connection of its own.
fn cmd(server: &RedisServer, args: &[&str]) -> redis::RedisResult<redis::Value> {
    let mut conn = redis::Client::open(server.url())?.get_connection()?;
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    command.query(&mut conn)
}

/// A TCP proxy whose target can move, as a DNS name or a virtual IP moves
/// to the new primary in a failover. Connections already open stay where
/// they were.
struct MovableProxy {
    port: u16,
    target: Arc<Mutex<u16>>,
    task: tokio::task::JoinHandle<()>,
}

impl MovableProxy {
    async fn start(target_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Arc::new(Mutex::new(target_port));
        let shared = target.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let port = *shared.lock().unwrap();
                tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(("127.0.0.1", port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self { port, target, task }
    }

    fn point_to(&self, port: u16) {
        *self.target.lock().unwrap() = port;
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for MovableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn app_on(redis_url: String) -> TestApp {
    let mut config = test_config();
    config.stores.redis_url = redis_url;
    config.stores.store_timeout_ms = 3000;
    let app = spawn_app_with(config).await;
    app.create_sku(SKU, json!({"on_hand": 100})).await;
    app
}

async fn readyz(app: &TestApp) -> (u16, Value) {
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    let status = response.status().as_u16();
    (status, body(response).await)
}

/// Asserts a 503 `unavailable` with `Retry-After`.
async fn assert_unavailable(response: reqwest::Response) {
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert_problem(response, 503, "unavailable").await;
    assert!(retry_after.is_some_and(|s| s >= 1), "Retry-After");
}

/// `dropgate_redis_errors_total{kind}` as /metrics shows it.
async fn redis_errors(app: &TestApp, kind: &str) -> u64 {
    let text = app.get("/metrics").await.text().await.unwrap();
    let prefix = format!("dropgate_redis_errors_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Admits with `key` (customer = key) and returns the status.
async fn admit_status(app: &TestApp, key: &str) -> u16 {
    app.admit(SKU, key, key, 1).await.status().as_u16()
}

async fn wait_until_ready(app: &TestApp, within: Duration) {
    let started = Instant::now();
    loop {
        if readyz(app).await.0 == 200 {
            return;
        }
        assert!(started.elapsed() < within, "not ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The gate's and the ledger's held units once the worker caught up.
async fn held_everywhere(app: &TestApp) -> (i64, i64) {
    app.wait_for_ledger(SKU).await;
    let gate = app.sku(SKU).await["held"].as_i64().unwrap();
    (gate, app.ledger_counts(SKU).await.1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_memory_answers_503_and_readyz_follows_until_memory_is_raised() {
    let redis = RedisServer::start_with(&["--maxmemory-policy", "noeviction"])
        .await
        .expect("redis-server starts");
    let app = app_on(redis.url()).await;
    assert_eq!(admit_status(&app, "before").await, 201);
    let oom_before = redis_errors(&app, "oom").await;

    cmd(&redis, &["CONFIG", "SET", "maxmemory", "1"]).unwrap();
    let refused = ["oom-1", "oom-2", "oom-3"];
    for key in refused {
        assert_unavailable(app.admit(SKU, key, key, 1).await).await;
    }
    // Reads need no memory: the SKU is still served.
    assert_eq!(app.sku(SKU).await["held"], 1);
    let (status, ready) = readyz(&app).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["redis"], "out of memory");
    assert!(
        ready["missing"]
            .as_array()
            .unwrap()
            .contains(&json!("redis (out of memory)"))
    );
    assert!(redis_errors(&app, "oom").await >= oom_before + 3);

    cmd(&redis, &["CONFIG", "SET", "maxmemory", "0"]).unwrap();
    wait_until_ready(&app, Duration::from_secs(10)).await;
    // The refused admissions stored nothing: their keys are decided afresh.
    for key in refused {
        let response = app.admit(SKU, key, key, 1).await;
        assert_eq!(response.status(), 201, "{key}");
        assert!(response.headers().get("idempotent-replayed").is_none());
    }
    assert_eq!(held_everywhere(&app).await, (4, 4));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_primary_answers_503_and_a_failover_is_followed() {
    let primary = RedisServer::start_with(&[])
        .await
        .expect("redis-server starts");
    let replica =
        RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port().to_string()])
            .await
            .expect("redis-server starts");
    let proxy = MovableProxy::start(primary.port()).await;
    let app = app_on(proxy.url()).await;
    assert_eq!(admit_status(&app, "before").await, 201);
    // Everything written so far is on the replica.
    let started = Instant::now();
    while cmd(&primary, &["WAIT", "1", "1000"]).unwrap() != redis::Value::Int(1) {
        assert!(started.elapsed() < Duration::from_secs(20), "replica sync");
    }

    // Failover: the replica is promoted, the old primary demoted under it.
    cmd(&replica, &["REPLICAOF", "NO", "ONE"]).unwrap();
    cmd(
        &primary,
        &["REPLICAOF", "127.0.0.1", &replica.port().to_string()],
    )
    .unwrap();
    // Once synced it answers READONLY to writes (LOADING while it syncs).
    let started = Instant::now();
    while !matches!(
        cmd(&primary, &["INFO", "replication"]),
        Ok(redis::Value::BulkString(info)) if String::from_utf8_lossy(&info).contains("master_link_status:up")
    ) {
        assert!(started.elapsed() < Duration::from_secs(20), "demoted sync");
        std::thread::sleep(Duration::from_millis(20));
    }
    let readonly_before = redis_errors(&app, "readonly").await;
    for key in ["ro-1", "ro-2"] {
        assert_unavailable(app.admit(SKU, key, key, 1).await).await;
    }
    let (status, ready) = readyz(&app).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["redis"], "read-only (a replica)");
    assert!(redis_errors(&app, "readonly").await >= readonly_before + 2);

    // The address now leads to the new primary. The connection opened after
    // the last READONLY still goes to the old one; one more READONLY at most
    // moves it.
    proxy.point_to(replica.port());
    let mut statuses = Vec::new();
    for attempt in 0..3 {
        let status = admit_status(&app, &format!("after-{attempt}")).await;
        statuses.push(status);
        if status == 201 {
            break;
        }
    }
    assert!(statuses == [201] || statuses == [503, 201], "{statuses:?}");
    wait_until_ready(&app, Duration::from_secs(10)).await;
    // Nothing the demoted primary refused was taken; the new primary has
    // the first hold and the one after the failover, and so does the ledger
    // (the worker followed the failover too).
    assert_eq!(held_everywhere(&app).await, (2, 2));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_loading_its_dataset_answers_503_and_readyz_follows() {
    let mut redis = RedisServer::start_with(&[])
        .await
        .expect("redis-server starts");
    let app = app_on(redis.url()).await;
    assert_eq!(admit_status(&app, "before").await, 201);
    app.wait_for_ledger(SKU).await;
    // Enough data, loaded slowly enough, for a window of several seconds.
    cmd(
        &redis,
        &[
            "EVAL",
            "for i = 1, 20000 do redis.call('SET', 'filler:' .. i, i) end return 1",
            "0",
        ],
    )
    .unwrap();
    cmd(&redis, &["SAVE"]).unwrap();
    redis
        .reload_with(&[
            "--key-load-delay",
            "500",
            "--loading-process-events-interval-bytes",
            "1024",
        ])
        .await
        .expect("redis-server reloads");
    let loading_before = redis_errors(&app, "loading").await;

    assert_unavailable(app.admit(SKU, "loading-1", "loading-1", 1).await).await;
    let (status, ready) = readyz(&app).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["redis"], "loading its dataset");
    assert!(redis_errors(&app, "loading").await > loading_before);

    wait_until_ready(&app, Duration::from_secs(60)).await;
    assert_eq!(admit_status(&app, "loading-1").await, 201);
    assert_eq!(held_everywhere(&app).await, (2, 2));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_busy_in_a_script_answers_503_until_it_is_killed() {
    let redis = RedisServer::start_with(&["--busy-reply-threshold", "100"])
        .await
        .expect("redis-server starts");
    let app = app_on(redis.url()).await;
    assert_eq!(admit_status(&app, "before").await, 201);
    app.wait_for_ledger(SKU).await;

    // A read-only script that never ends, so SCRIPT KILL may stop it.
    let url = redis.url();
    let runaway = std::thread::spawn(move || {
        let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
        let _: redis::RedisResult<redis::Value> = redis::cmd("EVAL")
            .arg("local i = 0 while true do i = i + 1 end")
            .arg(0)
            .query(&mut conn);
    });
    let started = Instant::now();
    while !matches!(cmd(&redis, &["PING"]), Err(e) if e.code() == Some("BUSY")) {
        assert!(started.elapsed() < Duration::from_secs(10), "never busy");
        std::thread::sleep(Duration::from_millis(20));
    }

    assert_unavailable(app.admit(SKU, "busy-1", "busy-1", 1).await).await;
    let (status, ready) = readyz(&app).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["redis"], "busy running a script");
    assert!(redis_errors(&app, "busy").await >= 1);

    cmd(&redis, &["SCRIPT", "KILL"]).unwrap();
    runaway.join().unwrap();
    wait_until_ready(&app, Duration::from_secs(10)).await;
    assert_eq!(admit_status(&app, "busy-1").await, 201);
    assert_eq!(held_everywhere(&app).await, (2, 2));
    app.stop().await;
}

/// A TCP proxy to Postgres that stops forwarding, both ways and for good,
/// right after a client sends `pattern`: the client's statement runs, its
/// answer never arrives. To Postgres the session then sits idle inside its
/// transaction, holding its locks, as a stopped or cut-off process's would.
struct FreezingProxy {
    port: u16,
    frozen: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezingProxy {
    async fn start(pattern: &'static [u8]) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let shared = frozen.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect("127.0.0.1:5432").await else {
                    continue;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let frozen = shared.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = client_read.read(&mut buffer).await {
                        if frozen.load(Ordering::SeqCst) {
                            std::future::pending::<()>().await;
                        }
                        let chunk = &buffer[..n];
                        if chunk.windows(pattern.len()).any(|w| w == pattern) {
                            frozen.store(true, Ordering::SeqCst);
                        }
                        if server_write.write_all(chunk).await.is_err() {
                            return;
                        }
                    }
                });
                let frozen = shared.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = server_read.read(&mut buffer).await {
                        if frozen.load(Ordering::SeqCst) {
                            std::future::pending::<()>().await;
                        }
                        if client_write.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { port, frozen, task }
    }

    fn is_frozen(&self) -> bool {
        self.frozen.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Backends of `database` idle inside a transaction.
async fn idle_in_transaction(pool: &sqlx::PgPool, database: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = $1 AND state = 'idle in transaction'",
    )
    .bind(database)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_worker_loses_its_row_lock_and_confirms_answer_within_the_store_timeout() {
    const STORE_TIMEOUT_MS: u64 = 2000;
    const WORKER_STORE_TIMEOUT_MS: u64 = 1000;
    let mut config = test_config();
    config.stores.store_timeout_ms = STORE_TIMEOUT_MS;
    // Only the stalled worker, and the confirm itself, write the ledger.
    (config.no_worker, config.no_reconciler) = (true, true);
    let app = spawn_app_with(config).await;
    app.create_sku(SKU, json!({"on_hand": 10})).await;
    let response = app.admit(SKU, "k1", "c1", 1).await;
    assert_eq!(response.status(), 201);
    let hold = body(response).await["hold_id"].as_str().unwrap().to_owned();

    // A real worker, reaching Postgres through the freezing proxy: it locks
    // the SKU's row for its batch and then hears nothing more.
    let proxy = FreezingProxy::start(b"ORDER BY sku FOR UPDATE").await;
    let worker = common::process::Dropgate::spawn(
        &["worker"],
        &[
            (
                "DATABASE_URL",
                format!(
                    "postgres://postgres@127.0.0.1:{}/{}",
                    proxy.port, app.database
                ),
            ),
            ("REDIS_URL", app.redis_url.clone()),
            ("DROPGATE_KEY_PREFIX", app.prefix.clone()),
            (
                "DROPGATE_STORE_TIMEOUT_MS",
                WORKER_STORE_TIMEOUT_MS.to_string(),
            ),
        ],
        None,
    );
    let pool = app.pg().await;
    let started = Instant::now();
    while !(proxy.is_frozen() && idle_in_transaction(&pool, &app.database).await == 1) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "worker never locked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let locked_at = Instant::now();
    // And the process itself stops, as in the field.
    let stopped = Command::new("kill")
        .args(["-STOP", &worker.pid().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());

    // The confirm needs that row lock: it answers within its store timeout
    // (200 if the lock came free in time, else 503), not at 10 s.
    let asked = Instant::now();
    let confirm = app.hold_action(&hold, "confirm").await;
    let answered_in = asked.elapsed();
    let status = confirm.status().as_u16();
    assert!(status == 200 || status == 503, "{status}");
    if status == 503 {
        assert_unavailable(confirm).await;
    }
    assert!(
        answered_in < Duration::from_millis(STORE_TIMEOUT_MS + 1000),
        "confirm took {answered_in:?}"
    );

    // Postgres ends the stalled session after the worker's store timeout,
    // which frees the row.
    while idle_in_transaction(&pool, &app.database).await > 0 {
        assert!(
            locked_at.elapsed() < Duration::from_millis(WORKER_STORE_TIMEOUT_MS + 4000),
            "the stalled session still holds its lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let confirm = app.hold_action(&hold, "confirm").await;
    assert_eq!(confirm.status(), 200);
    assert_eq!(body(confirm).await["state"], "confirmed");
    assert_eq!(app.ledger_counts(SKU).await, (10, 0, 1));
    let movements: i64 = sqlx::query_scalar("SELECT count(*) FROM movements")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(movements, 3, "creation, admission, confirmation: once each");
    pool.close().await;
    worker.kill();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirms_queued_behind_a_stalled_lock_answer_503_within_one_store_timeout_and_a_retry_confirms_once()
 {
    const STORE_TIMEOUT_MS: u64 = 1500;
    let mut config = test_config();
    config.stores.store_timeout_ms = STORE_TIMEOUT_MS;
    (config.no_worker, config.no_reconciler) = (true, true);
    let app = spawn_app_with(config).await;
    app.create_sku(SKU, json!({"on_hand": 10})).await;
    let mut holds = Vec::new();
    for i in 0..3 {
        let response = app.admit(SKU, &format!("k{i}"), &format!("c{i}"), 1).await;
        assert_eq!(response.status(), 201);
        holds.push(body(response).await["hold_id"].as_str().unwrap().to_owned());
    }

    // A stalled session holds the SKU's row lock, as a stopped worker's
    // would, for as long as this test keeps it.
    let pool = app.pg().await;
    let mut stalled = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM skus WHERE sku = $1 FOR UPDATE")
        .bind(SKU)
        .execute(&mut *stalled)
        .await
        .unwrap();

    // Three confirms at once: they queue on the SKU's flush, and each waits
    // for the row lock. Each answers 503 within its one budget, not one
    // budget per queued flush before it.
    let answers = join_all(holds.iter().map(|hold| {
        let app = &app;
        async move {
            let asked = Instant::now();
            let response = app.hold_action(hold, "confirm").await;
            (asked.elapsed(), response)
        }
    }))
    .await;
    for (answered_in, response) in answers {
        assert!(
            answered_in < Duration::from_millis(2 * STORE_TIMEOUT_MS),
            "confirm took {answered_in:?}"
        );
        assert_unavailable(response).await;
    }

    // Once the stalled session lets go, a retry confirms each hold, and
    // the ledger has each confirmation once.
    stalled.rollback().await.unwrap();
    for hold in &holds {
        let confirm = app.hold_action(hold, "confirm").await;
        assert_eq!(confirm.status(), 200);
        let confirmed = body(confirm).await;
        assert_eq!(
            (confirmed["state"].as_str(), confirmed["durable"].as_bool()),
            (Some("confirmed"), Some(true))
        );
    }
    assert_eq!(app.ledger_counts(SKU).await, (10, 0, 3));
    let confirmations: i64 =
        sqlx::query_scalar("SELECT count(*) FROM movements WHERE kind = 'confirm'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(confirmations, 3, "each confirmation once");
    pool.close().await;
    app.stop().await;
}
