//! The operator's dashboard: `GET /` (embedded page and assets) and
//! `GET /v1/dashboard` (its figures), and the page itself in headless
//! Chromium driven by tests/browser/dashboard.mjs.
//!
//! The browser test needs Debian's `chromium` and node with playwright-core:
//! `apt-get install -y chromium nodejs npm && npm ci --prefix tests/browser`.
//! Without them it fails, unless `DROPGATE_SKIP_BROWSER=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::{PgProxy, start_redis};
use common::{TestApp, body, spawn_app, spawn_app_with, test_config};
use dropgate::telemetry::metric;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const CHROMIUM: &str = "/usr/bin/chromium";

/// GET without a token, as an operator's browser does.
async fn get_plain(app: &TestApp, path: &str) -> reqwest::Response {
    app.client.get(app.url(path)).send().await.expect("GET")
}

async fn dashboard(app: &TestApp) -> Value {
    let response = get_plain(app, "/v1/dashboard").await;
    assert_eq!(response.status(), 200);
    assert!(
        response
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    body(response).await
}

fn sku_row<'a>(figures: &'a Value, sku: &str) -> &'a Value {
    figures["skus"]
        .as_array()
        .expect("a skus array")
        .iter()
        .find(|row| row["sku"] == sku)
        .unwrap_or_else(|| panic!("{sku} not on the dashboard: {figures}"))
}

async fn admit_ok(app: &TestApp, sku: &str, key: &str) -> String {
    let response = app.admit(sku, key, &format!("c-{key}"), 1).await;
    assert_eq!(response.status(), 201);
    body(response).await["hold_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_page_and_its_assets_are_embedded_and_load_nothing_from_elsewhere() {
    let app = spawn_app().await;
    for (path, content_type) in [
        ("/", "text/html"),
        ("/dashboard.js", "text/javascript"),
        ("/dashboard.css", "text/css"),
    ] {
        let response = get_plain(&app, path).await;
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        let got = headers["content-type"].to_str().unwrap();
        assert!(got.starts_with(content_type), "{path}: {got}");
        assert_eq!(headers["cache-control"], "no-cache", "{path}");
        let text = response.text().await.unwrap();
        assert!(!text.is_empty());
        for scheme in ["http://", "https://", "//cdn", "@import", "fonts.g"] {
            assert!(!text.contains(scheme), "{path} references {scheme}");
        }
        if path == "/" {
            let csp = headers["content-security-policy"].to_str().unwrap();
            assert!(csp.contains("default-src 'none'"), "{csp}");
            assert!(text.contains("/dashboard.js") && text.contains("/dashboard.css"));
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn the_figures_show_stock_ledger_drift_and_admissions() {
    let app = spawn_app().await;
    let empty = dashboard(&app).await;
    assert_eq!(empty["redis"], "ok");
    assert_eq!(empty["postgres"], "ok");
    assert_eq!(empty["gate"], "built");
    assert_eq!(empty["skus"], json!([]));
    assert!(empty["generated_at"].as_str().unwrap().ends_with('Z'));

    app.create_sku("drop-1", json!({"on_hand": 20})).await;
    for i in 0..3 {
        admit_ok(&app, "drop-1", &format!("k{i}")).await;
    }
    let figures = dashboard(&app).await;
    let row = sku_row(&figures, "drop-1");
    assert_eq!(
        (
            &row["on_hand"],
            &row["available"],
            &row["held"],
            &row["sold"]
        ),
        (&json!(20), &json!(17), &json!(3), &json!(0)),
        "{row}"
    );
    assert!(row["backlog"].as_u64().is_some(), "{row}");
    // This app's own figures: three holds, every other outcome zero.
    assert_eq!(
        figures["admissions_total"],
        json!({"held": 3, "sold_out": 0, "limit_exceeded": 0, "rate_limited": 0,
               "replayed": 0, "error": 0}),
        "{figures}"
    );

    // Once the worker caught up (and trimmed the stream), gate and ledger
    // agree and nothing is waiting.
    app.wait_for_ledger("drop-1").await;
    app.wait_until_trimmed("drop-1").await;
    // The worker records the lag just after its commit, which is what
    // wait_for_ledger saw.
    let lag = wait_for_figure(&app, metric::COMMIT_LAG_SECONDS).await;
    let figures = dashboard(&app).await;
    let row = sku_row(&figures, "drop-1");
    assert_eq!(
        (
            &row["ledger_on_hand"],
            &row["ledger_held"],
            &row["ledger_sold"]
        ),
        (&json!(20), &json!(3), &json!(0)),
        "{row}"
    );
    assert_eq!(
        row["drift"],
        json!({"on_hand": 0, "held": 0, "sold": 0}),
        "{row}"
    );
    assert_eq!(row["backlog"], 0, "{row}");
    assert_eq!(figures["backlog_total"], 0);
    assert_eq!(figures["max_abs_drift"], 0);
    let shown = figures["commit_lag_seconds"].as_f64().expect("a lag");
    assert!((shown - lag).abs() < 1e-9, "{shown} is not {lag}");
    assert!(lag >= 0.0, "{lag}");
    app.stop().await;
}

/// Waits until the worker has set the gauge `name` in the app's metrics.
async fn wait_for_figure(app: &TestApp, name: &str) -> f64 {
    for _ in 0..200 {
        if let Some(value) = app.metrics.gauge(name, &[]) {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{name} was never set");
}

#[tokio::test]
async fn at_most_fifty_skus_in_id_order() {
    let app = spawn_app().await;
    for i in 0..52 {
        app.create_sku(&format!("s{i:02}"), json!({"on_hand": 1}))
            .await;
    }
    let figures = dashboard(&app).await;
    let names: Vec<&str> = figures["skus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["sku"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..50).map(|i| format!("s{i:02}")).collect();
    assert_eq!(names, expected);
    assert_eq!(figures["skus_truncated"], true);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_is_away_shows_as_unreachable_not_as_an_error() {
    let mut redis = start_redis().await;
    let mut proxy = PgProxy::start().await;
    let mut config = test_config();
    proxy.route(&mut config);
    config.stores.redis_url = redis.url();
    config.stores.store_timeout_ms = 1000;
    let app = spawn_app_with(config).await;
    app.create_sku("drop-1", json!({"on_hand": 20})).await;
    app.wait_for_ledger("drop-1").await;

    redis.kill();
    let started = Instant::now();
    let figures = dashboard(&app).await;
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(
        (&figures["redis"], &figures["postgres"], &figures["gate"]),
        (&json!("unreachable"), &json!("ok"), &json!("not built")),
        "{figures}"
    );
    // The ledger's figures are still there; the gate's are unknown.
    let row = sku_row(&figures, "drop-1");
    assert_eq!(row["ledger_on_hand"], 20, "{row}");
    assert!(row["on_hand"].is_null() && row["drift"].is_null(), "{row}");
    assert!(figures["backlog_total"].is_null(), "{figures}");
    assert!(figures["max_abs_drift"].is_null(), "{figures}");

    proxy.cut().await;
    let started = Instant::now();
    let figures = dashboard(&app).await;
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(
        (&figures["redis"], &figures["postgres"]),
        (&json!("unreachable"), &json!("unreachable")),
        "{figures}"
    );
    assert_eq!(figures["skus"], json!([]));
    app.stop().await;
}

/// What the browser test needs; `Err` names what is missing and how to get it.
fn browser_prerequisites(root: &Path) -> Result<(), String> {
    let mut missing = Vec::new();
    if !Path::new(CHROMIUM).exists() {
        missing.push(format!("{CHROMIUM} (Debian: apt-get install -y chromium)"));
    }
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !node {
        missing.push("node (Debian: apt-get install -y nodejs npm)".to_owned());
    }
    if !root
        .join("tests/browser/node_modules/playwright-core/package.json")
        .exists()
    {
        missing.push("playwright-core (npm ci --prefix tests/browser)".to_owned());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join(", "))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_renders_and_follows_a_drop_in_headless_chromium() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if let Err(missing) = browser_prerequisites(&root) {
        if std::env::var("DROPGATE_SKIP_BROWSER").as_deref() == Ok("1") {
            eprintln!("skipping the browser test (DROPGATE_SKIP_BROWSER=1); missing: {missing}");
            return;
        }
        panic!(
            "the dashboard browser test needs: {missing}. \
             Install them, or set DROPGATE_SKIP_BROWSER=1 to skip this test."
        );
    }

    let app = spawn_app().await;
    app.create_sku("drop-1", json!({"on_hand": 20})).await;
    // Committed and trimmed before the page loads, so it shows no backlog.
    app.wait_for_ledger("drop-1").await;
    app.wait_until_trimmed("drop-1").await;
    let screenshot = root.join("target/dashboard.png");
    let _ = std::fs::remove_file(&screenshot);

    let mut node = tokio::process::Command::new("node")
        .arg(root.join("tests/browser/dashboard.mjs"))
        .arg(format!("http://{}", app.addr))
        .arg("drop-1")
        .arg(
            json!({
                "on_hand": 20, "available": 15, "held": 3, "sold": 2,
                "admitted_at_least": 5
            })
            .to_string(),
        )
        .arg(&screenshot)
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let mut stdin = node.stdin.take().unwrap();
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut next_message = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the browser script answers within 60 s")
            .expect("its stdout")
            .expect("a line before it exits");
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"))
    };

    // The page shows the SKU as created.
    let initial = next_message().await;
    assert_eq!(initial["phase"], "initial", "{initial}");
    assert_eq!(
        initial["values"],
        json!({"on_hand": 20, "available": 20, "held": 0, "sold": 0, "backlog": 0, "drift": 0}),
        "{initial}"
    );
    assert_eq!(initial["tiles"]["redis"]["state"], "ok", "{initial}");
    assert_eq!(initial["tiles"]["postgres"]["state"], "ok", "{initial}");

    // A drop: five holds, two of them paid.
    let mut holds = Vec::new();
    for i in 0..5 {
        holds.push(admit_ok(&app, "drop-1", &format!("k{i}")).await);
    }
    for hold in &holds[..2] {
        let response = app.hold_action(hold, "confirm").await;
        assert_eq!(response.status(), 200);
    }
    stdin.write_all(b"go\n").await.unwrap();
    stdin.flush().await.unwrap();

    let last = next_message().await;
    let status = tokio::time::timeout(Duration::from_secs(30), node.wait())
        .await
        .expect("the browser script exits")
        .expect("its exit status");
    assert_eq!(last["phase"], "final", "{last}");
    assert_eq!(last["foreign_requests"], json!([]), "{last}");
    assert_eq!(last["page_errors"], json!([]), "{last}");
    assert_eq!(
        (
            &last["values"]["on_hand"],
            &last["values"]["available"],
            &last["values"]["held"],
            &last["values"]["sold"]
        ),
        (&json!(20), &json!(15), &json!(3), &json!(2)),
        "{last}"
    );
    assert_eq!(last["legend"]["held"]["total"], 5, "{last}");
    assert_eq!(last["ok"], true, "{last}");
    assert!(status.success(), "{status}: {last}");
    assert!(
        screenshot.exists(),
        "no screenshot at {}",
        screenshot.display()
    );
    eprintln!("dashboard screenshot: {}", screenshot.display());
    app.stop().await;
}
