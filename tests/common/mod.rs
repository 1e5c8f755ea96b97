//! The test harness: every test gets its own dropgate, served on a free
//! port, with its own Postgres database and its own Redis key prefix, so
//! tests run in parallel and leave nothing behind.
#![allow(dead_code)]

pub mod process;

use dropgate::app::Dropgate;
use dropgate::config::{DEFAULT_REDIS_URL, ServeConfig, StoreConfig};
use dropgate::startup::Application;
use dropgate::telemetry::Metrics;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use std::net::SocketAddr;
use tokio::sync::oneshot;

pub const ADMIN: &str = "test-admin-token";
pub const STOREFRONT: &str = "test-storefront-token";
pub const PG_BASE: &str = "postgres://postgres@127.0.0.1:5432";

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub app: Dropgate,
    pub database: String,
    pub prefix: String,
    pub redis_url: String,
    /// Everything this app recorded, and nothing another test did.
    pub metrics: Metrics,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// A serve configuration for a test: fresh database and key prefix,
/// per-customer rate limit off unless the test turns it on.
pub fn test_config() -> ServeConfig {
    let id = uuid::Uuid::new_v4().simple().to_string();
    ServeConfig {
        stores: StoreConfig {
            database_url: format!("{PG_BASE}/dg_test_{}", &id[..16]),
            redis_url: DEFAULT_REDIS_URL.to_owned(),
            key_prefix: format!("t{}", &id[..12]),
            // Generous: a loaded CI machine must not turn into flaky 503s.
            store_timeout_ms: 10_000,
        },
        listen: "127.0.0.1:0".parse().expect("an address"),
        admin_token: Some(ADMIN.to_owned()),
        storefront_tokens: vec![STOREFRONT.to_owned(), "second-storefront-token".to_owned()],
        customer_rps: 0,
        // Tests fire thousands of concurrent requests to check atomicity,
        // not load shedding (tests/edge.rs sets its own limit).
        max_in_flight: 10_000,
        // Tests read the dashboard right after changing what it shows.
        dashboard_interval_ms: 0,
        ..ServeConfig::default()
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(test_config()).await
}

pub async fn spawn_app_with(config: ServeConfig) -> TestApp {
    dropgate::telemetry::init_logs_with("warn", false);
    let database = config
        .stores
        .database_url
        .rsplit('/')
        .next()
        .expect("a database name")
        .to_owned();
    let prefix = config.stores.key_prefix.clone();
    let redis_url = config.stores.redis_url.clone();
    let metrics = Metrics::new();
    let application = Application::build_with_metrics(config, metrics.clone())
        .await
        .expect("the app builds");
    let addr = application.local_addr().expect("a bound address");
    let app = application.app().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TestApp {
        addr,
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("a client"),
        app,
        database,
        prefix,
        redis_url,
        metrics,
        stop: Some(stop),
        server: Some(server),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn put_sku(&self, sku: &str, body: Value) -> Response {
        self.client
            .put(self.url(&format!("/v1/skus/{sku}")))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .expect("PUT sku")
    }

    /// Creates a SKU and asserts it was created.
    pub async fn create_sku(&self, sku: &str, body: Value) {
        let response = self.put_sku(sku, body).await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{:?}",
            response.text().await
        );
    }

    pub async fn admit(&self, sku: &str, key: &str, customer: &str, quantity: i64) -> Response {
        self.client
            .post(self.url(&format!("/v1/skus/{sku}/holds")))
            .bearer_auth(STOREFRONT)
            .header("Idempotency-Key", key)
            .json(&json!({"customer_id": customer, "quantity": quantity}))
            .send()
            .await
            .expect("POST hold")
    }

    pub async fn hold_action(&self, hold_id: &str, action: &str) -> Response {
        self.client
            .post(self.url(&format!("/v1/holds/{hold_id}/{action}")))
            .bearer_auth(STOREFRONT)
            .send()
            .await
            .expect("POST hold action")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(STOREFRONT)
            .send()
            .await
            .expect("GET")
    }

    pub async fn sku(&self, sku: &str) -> Value {
        let response = self.get(&format!("/v1/skus/{sku}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("a SKU")
    }

    pub async fn pg(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&format!("{PG_BASE}/{}", self.database))
            .await
            .expect("test database")
    }

    /// Environment for a dropgate child process sharing this app's stores
    /// and tokens, serving on `listen` when given.
    pub fn child_env(&self, listen: Option<SocketAddr>) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("DATABASE_URL", format!("{PG_BASE}/{}", self.database)),
            ("REDIS_URL", self.redis_url.clone()),
            ("DROPGATE_KEY_PREFIX", self.prefix.clone()),
            ("DROPGATE_ADMIN_TOKEN", ADMIN.to_owned()),
            ("DROPGATE_STOREFRONT_TOKENS", STOREFRONT.to_owned()),
            ("DROPGATE_CUSTOMER_RPS", "0".to_owned()),
        ];
        if let Some(addr) = listen {
            env.push(("DROPGATE_LISTEN", addr.to_string()));
        }
        env
    }

    /// One integer from the test's ledger (a `count(*)` or a `sum`).
    pub async fn count(&self, sql: &'static str) -> i64 {
        let pool = self.pg().await;
        let n = sqlx::query_scalar(sql)
            .fetch_one(&pool)
            .await
            .expect("count query");
        pool.close().await;
        n
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis_url.as_str())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("redis")
    }

    /// Changes a SKU's stock hash behind dropgate's back, e.g.
    /// `tamper_stock("drop", "HINCRBY", "held", 5)`: drift for tests to find.
    pub async fn tamper_stock(&self, sku: &str, command: &str, field: &str, value: i64) {
        let mut redis = self.redis().await;
        let _: i64 = redis::cmd(command)
            .arg(self.key(sku, "stock"))
            .arg(field)
            .arg(value)
            .query_async(&mut redis)
            .await
            .expect("the stock hash changes");
    }

    pub fn key(&self, sku: &str, rest: &str) -> String {
        format!("{}:{{{sku}}}:{rest}", self.prefix)
    }

    /// Redis's clock, unix ms: the one clock the gate decides by.
    pub async fn redis_now_ms(&self) -> i64 {
        self.app.gate.time_ms().await.expect("Redis TIME")
    }

    /// Places a live hold's expiry at `at_ms` by Redis's clock (the hold and
    /// the SKU's expiry index), as if time had moved: the fixture for
    /// anything that falls due, since no test can move Redis's clock. The
    /// reaper's due hint stays as the admission left it.
    pub async fn place_expiry(&self, sku: &str, hold_id: &str, at_ms: i64) {
        let mut redis = self.redis().await;
        let () = redis::pipe()
            .hset(self.key(sku, &format!("h:{hold_id}")), "e", at_ms)
            .ignore()
            .zadd(self.key(sku, "expiry"), hold_id, at_ms)
            .ignore()
            .query_async(&mut redis)
            .await
            .expect("place the expiry");
    }

    /// Makes a live hold due now by Redis's clock, hint included: what the
    /// hold's time passing looks like to every reader.
    pub async fn make_due(&self, sku: &str, hold_id: &str) {
        let now = self.redis_now_ms().await;
        self.place_expiry(sku, hold_id, now - 1).await;
        let mut redis = self.redis().await;
        let _: i64 = redis::cmd("ZADD")
            .arg(format!("{}:due", self.prefix))
            .arg("LT")
            .arg(now - 1)
            .arg(sku)
            .query_async(&mut redis)
            .await
            .expect("hint the SKU due");
    }

    /// Waits until the ledger has applied every event of `sku` (the worker
    /// runs in the background).
    pub async fn wait_for_ledger(&self, sku: &str) {
        for _ in 0..200 {
            if self.ledger_caught_up(sku).await {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("the ledger did not catch up with {sku}");
    }

    /// Whether the ledger has applied every event in `sku`'s stream.
    pub async fn ledger_caught_up(&self, sku: &str) -> bool {
        let sku = dropgate::domain::SkuId::parse(sku).expect("sku");
        let applied = self
            .app
            .ledger
            .sku(&sku)
            .await
            .expect("ledger")
            .expect("row")
            .applied;
        let after = self
            .app
            .gate
            .events(&sku, applied, None, 1)
            .await
            .expect("events");
        after.is_empty()
    }

    /// Waits until the worker has acknowledged and trimmed every event of
    /// `sku` from its stream.
    pub async fn wait_until_trimmed(&self, sku: &str) {
        let mut redis = self.redis().await;
        for _ in 0..200 {
            let length: u64 = redis::cmd("XLEN")
                .arg(self.key(sku, "events"))
                .query_async(&mut redis)
                .await
                .expect("XLEN");
            if length == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("the worker did not trim {sku}'s stream");
    }

    /// Ledger counters of a SKU: (on_hand, held, sold).
    pub async fn ledger_counts(&self, sku: &str) -> (i64, i64, i64) {
        let pool = self.pg().await;
        let row: (i64, i64, i64) =
            sqlx::query_as("SELECT on_hand, held, sold FROM skus WHERE sku = $1")
                .bind(sku)
                .fetch_one(&pool)
                .await
                .expect("sku row");
        pool.close().await;
        row
    }

    /// Stops the server and its background services, then drops the test's
    /// database and Redis keys.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        cleanup(&self.database, &self.prefix, &self.redis_url).await;
        self.database.clear();
    }
}

impl Drop for TestApp {
    /// A test that panicked still cleans up after itself.
    fn drop(&mut self) {
        if self.database.is_empty() {
            return;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let (database, prefix, redis_url) = (
            self.database.clone(),
            self.prefix.clone(),
            self.redis_url.clone(),
        );
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Runtime::new() {
                runtime.block_on(cleanup(&database, &prefix, &redis_url));
            }
        })
        .join();
    }
}

pub async fn cleanup(database: &str, prefix: &str, redis_url: &str) {
    if let Ok(pool) = sqlx::PgPool::connect(&format!("{PG_BASE}/postgres")).await {
        // A test database name is generated, never taken from input.
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
        )))
        .execute(&pool)
        .await;
        pool.close().await;
    }
    if let Ok(client) = redis::Client::open(redis_url)
        && let Ok(mut conn) = client.get_multiplexed_async_connection().await
    {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        for chunk in keys.chunks(500) {
            let _: Result<(), _> = redis::cmd("UNLINK").arg(chunk).query_async(&mut conn).await;
        }
    }
}

/// A hold's `expires_at` (RFC 3339), in unix ms: times compare as times,
/// not as text.
pub fn expires_at_ms(hold: &Value) -> i64 {
    let text = hold["expires_at"].as_str().expect("an expires_at");
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .expect("an RFC 3339 time");
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).expect("a time in range")
}

/// Reads a JSON body.
pub async fn body(response: Response) -> Value {
    response.json().await.expect("a JSON body")
}

/// Asserts a problem+json answer with this status and code; returns it.
pub async fn assert_problem(response: Response, status: u16, code: &str) -> Value {
    assert_eq!(
        response.status().as_u16(),
        status,
        "expected {status} {code}"
    );
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let problem = body(response).await;
    assert_eq!(problem["code"], code, "{problem}");
    assert_eq!(problem["status"], status);
    assert_eq!(problem["type"], format!("/problems/{code}"));
    problem
}
