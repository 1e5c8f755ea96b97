//! Running a drop: metrics an on-call engineer reads, and stopping without
//! dropping a request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::{Dropgate, free_port};
use common::{STOREFRONT, body, spawn_app_with, test_config};
use dropgate::reconciler::Reconciler;
use dropgate::telemetry::metric;
use dropgate::worker::Worker;
use futures::future::join_all;
use redis::AsyncCommands;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The value of one sample line of the Prometheus text, e.g.
/// `dropgate_admissions_total{outcome="held"}`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_tell_what_the_drop_is_doing() {
    // The worker alone commits the admissions (a background reconciler could
    // write them first, and the worker's batch metrics would never appear);
    // the test runs the reconciler's pass itself, after the worker. It runs
    // the worker too, once the PUT has written the SKU's creation itself: a
    // background worker, woken by the creation's hint, may race the PUT to
    // it, which is harmless but makes the counts below vary.
    let mut config = test_config();
    (config.no_worker, config.no_reconciler) = (true, true);
    let app = spawn_app_with(config).await;
    app.create_sku("metered", json!({"on_hand": 2})).await;
    for i in 0..3 {
        app.admit("metered", &format!("k{i}"), &format!("c{i}"), 1)
            .await;
    }
    app.admit("metered", "k0", "c0", 1).await;
    let mut worker = Worker::new(app.app.clone(), Default::default()).unwrap();
    let mut redis = app.redis().await;
    for _ in 0..100 {
        let backlog: u64 = redis.xlen(app.key("metered", "events")).await.unwrap();
        if backlog == 0 && app.ledger_caught_up("metered").await {
            break;
        }
        app.metrics.scope(worker.run_once()).await.unwrap();
    }
    app.wait_until_trimmed("metered").await;
    // In the app's scope, so the pass records into the app's metrics.
    let reconciler = Reconciler::new(app.app.clone());
    app.metrics.scope(reconciler.run_once()).await.unwrap();

    // The figures, read as numbers from this test's own metrics.
    let m = &app.metrics;
    let admissions = BTreeMap::from([
        ("held".to_owned(), 2),
        ("replayed".to_owned(), 1),
        ("sold_out".to_owned(), 1),
    ]);
    assert_eq!(
        m.counter_by(metric::ADMISSIONS_TOTAL, "outcome"),
        admissions
    );
    let by_sku = |outcome: &str| {
        m.counter(
            metric::ADMISSIONS_BY_SKU_TOTAL,
            &[("sku", "metered"), ("outcome", outcome)],
        )
    };
    assert_eq!(
        (by_sku("held"), by_sku("sold_out"), by_sku("replayed")),
        (2, 1, 1)
    );
    assert_eq!(m.histogram(metric::ADMISSION_DURATION_SECONDS, &[]).0, 4);
    // The replay came after the sell-out: answered at the edge, one GET
    // and no script.
    assert_eq!(
        m.histogram(
            metric::REDIS_SCRIPT_DURATION_SECONDS,
            &[("script", "admit")]
        )
        .0,
        3
    );
    assert_eq!(m.counter(metric::ADMISSIONS_AT_EDGE_TOTAL, &[]), 1);
    // PUT and four POSTs.
    assert_eq!(m.histogram(metric::HTTP_REQUEST_DURATION_SECONDS, &[]).0, 5);
    assert_eq!(
        m.histogram(
            metric::HTTP_REQUEST_DURATION_SECONDS,
            &[("route", "/v1/skus/{sku}/holds"), ("status", "201")]
        )
        .0,
        3,
        "two holds and the replay"
    );
    // The SKU's creation and two holds; the rejection and the replay
    // appended no event.
    assert_eq!(m.counter(metric::LEDGER_EVENTS_APPLIED_TOTAL, &[]), 3);
    assert_eq!(m.counter(metric::LEDGER_EVENTS_SKIPPED_TOTAL, &[]), 0);
    assert_eq!(m.counter(metric::LEDGER_HOLDS_LOST_TOTAL, &[]), 0);
    let (batches, batched_events) = m.histogram(metric::WORKER_BATCH_EVENTS, &[]);
    // The PUT applied the SKU's creation itself; the worker the two holds,
    // each in exactly one batch.
    assert_eq!(batched_events, 2.0);
    assert_eq!(
        m.histogram(metric::WORKER_COMMIT_DURATION_SECONDS, &[]).0,
        batches,
        "one commit per batch"
    );
    assert!((1..=2).contains(&batches), "{batches}");
    let lag = m
        .gauge(metric::COMMIT_LAG_SECONDS, &[])
        .expect("a commit lag");
    assert!(lag.is_finite() && lag >= 0.0, "{lag}");
    assert_eq!(m.counter(metric::WORKER_ERRORS_TOTAL, &[]), 0);
    assert_eq!(
        m.gauge(metric::STREAM_BACKLOG_EVENTS, &[("sku", "metered")]),
        Some(0.0)
    );
    for counter in ["on_hand", "held", "sold"] {
        assert_eq!(
            m.gauge(
                metric::RECONCILER_DRIFT_UNITS,
                &[("sku", "metered"), ("counter", counter)]
            ),
            Some(0.0),
            "{counter}"
        );
    }
    assert_eq!(m.counter(metric::RECONCILER_REPAIRS_TOTAL, &[]), 0);
    for (state, holds) in [
        ("held", 2.0),
        ("confirmed", 0.0),
        ("released", 0.0),
        ("expired", 0.0),
        ("lost", 0.0),
    ] {
        assert_eq!(
            m.gauge(metric::HOLDS, &[("state", state)]),
            Some(holds),
            "{state}"
        );
    }
    assert_eq!(
        m.counter(metric::GATE_REBUILDS_TOTAL, &[]),
        1,
        "built once, at start-up"
    );
    assert_eq!(
        m.gauge(
            metric::BUILD_INFO,
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );

    // The same figures in the Prometheus text.
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    for (series, value) in [
        (r#"dropgate_admissions_total{outcome="held"}"#, 2.0),
        (r#"dropgate_admissions_total{outcome="sold_out"}"#, 1.0),
        (r#"dropgate_admissions_total{outcome="replayed"}"#, 1.0),
        (
            r#"dropgate_admissions_by_sku_total{sku="metered",outcome="held"}"#,
            2.0,
        ),
        ("dropgate_admission_duration_seconds_count", 4.0),
        (
            r#"dropgate_redis_script_duration_seconds_count{script="admit"}"#,
            3.0,
        ),
        ("dropgate_admissions_at_edge_total", 1.0),
        ("dropgate_ledger_events_applied_total", 3.0),
        ("dropgate_worker_batch_events_sum", 2.0),
        ("dropgate_worker_batch_events_count", batches as f64),
        (
            "dropgate_worker_commit_duration_seconds_count",
            batches as f64,
        ),
        ("dropgate_commit_lag_seconds", lag),
        (r#"dropgate_stream_backlog_events{sku="metered"}"#, 0.0),
        (
            r#"dropgate_reconciler_drift_units{sku="metered",counter="held"}"#,
            0.0,
        ),
        (r#"dropgate_holds{state="held"}"#, 2.0),
        ("dropgate_gate_rebuilds_total", 1.0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series}\n{text}");
    }
    assert_eq!(
        sample(
            &text,
            &format!(
                r#"dropgate_build_info{{version="{}"}}"#,
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0)
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("dropgate_http_request_duration_seconds_count")),
        "{text}"
    );
    app.stop().await;
}

/// Requests of the shutdown test, one every 2 ms.
const REQUESTS: u64 = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_finishes_in_flight_requests_and_loses_nothing() {
    let mut config = test_config();
    (config.no_worker, config.no_reconciler) = (true, true);
    let app = spawn_app_with(config).await;
    app.create_sku("drop", json!({"on_hand": 100000})).await;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut env = app.child_env(Some(listen));
    env.push(("DROPGATE_SHUTDOWN_DELAY_MS", "2500".to_owned()));
    let mut server = Dropgate::spawn(&["serve"], &env, Some(listen));
    // A new connection per request: a pooled idle connection closed by the
    // shutdown would look like a reset that the server did not cause.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let url = format!("http://{listen}/v1/skus/drop/holds");
    let answered = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn({
        let answered = answered.clone();
        async move {
            join_all((0..REQUESTS).map(|i| {
                let (client, url, answered) = (client.clone(), url.clone(), answered.clone());
                async move {
                    tokio::time::sleep(Duration::from_millis(i * 2)).await;
                    let sent = client
                        .post(url)
                        .bearer_auth(STOREFRONT)
                        .header("Idempotency-Key", format!("k{i}"))
                        .json(&json!({"customer_id": format!("c{i}"), "quantity": 1}))
                        .send()
                        .await;
                    answered.fetch_add(1, Ordering::Relaxed);
                    match sent {
                        Ok(response) => Ok(response.status().as_u16()),
                        Err(error) => Err(error.is_connect()),
                    }
                }
            }))
            .await
        }
    });
    // SIGTERM once the load runs: a quarter answered, the rest still coming.
    let running = async {
        while answered.load(Ordering::Relaxed) < REQUESTS / 4 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the server answers under load");
    let pid = server.pid().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exit = server.wait_for_exit(Duration::from_secs(20));
    assert_eq!(exit, Some(0), "exits 0 after draining");

    let answers = load.await.unwrap();
    let ok = answers.iter().filter(|a| **a == Ok(201)).count();
    let failed: Vec<_> = answers.iter().filter(|a| **a != Ok(201)).collect();
    assert!(
        failed.is_empty(),
        "every request was served, none reset: {failed:?}"
    );

    // Every admitted hold reaches the ledger: its event is in Redis.
    app.app
        .flush(&dropgate::domain::SkuId::parse("drop").unwrap(), None)
        .await
        .unwrap();
    assert_eq!(app.ledger_counts("drop").await, (100000, ok as i64, 0));
    let shown = body(app.get("/v1/skus/drop").await).await;
    assert_eq!(shown["held"], ok);
    app.stop().await;
}
