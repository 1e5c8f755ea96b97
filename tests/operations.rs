//! Running a drop: metrics an on-call engineer reads, and stopping without
//! dropping a request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::{free_port, Dropgate};
use common::{body, spawn_app_with, test_config, ADMIN, PG_BASE, STOREFRONT};
use futures::future::join_all;
use serde_json::json;
use std::net::SocketAddr;
use std::process::Command;
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
    // the test runs the reconciler's pass itself, after the worker.
    let mut config = test_config();
    config.no_reconciler = true;
    let app = spawn_app_with(config).await;
    app.create_sku("metered", json!({"on_hand": 2})).await;
    let before = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let held_before = sample(
        &before,
        r#"dropgate_admissions_by_sku_total{sku="metered",outcome="held"}"#,
    )
    .unwrap_or(0.0);
    for i in 0..3 {
        app.admit("metered", &format!("k{i}"), &format!("c{i}"), 1)
            .await;
    }
    app.admit("metered", "k0", "c0", 1).await;
    app.wait_for_ledger("metered").await;
    dropgate::reconciler::Reconciler::new(app.app.clone())
        .run_once()
        .await
        .unwrap();

    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    let by_sku = |outcome: &str| {
        sample(
            &text,
            &format!(r#"dropgate_admissions_by_sku_total{{sku="metered",outcome="{outcome}"}}"#),
        )
    };
    assert_eq!(by_sku("held").unwrap() - held_before, 2.0);
    assert!(by_sku("sold_out").unwrap() >= 1.0);
    assert!(by_sku("replayed").unwrap() >= 1.0);
    for series in [
        "dropgate_admissions_total{outcome=\"held\"}",
        "dropgate_admission_duration_seconds_count",
        "dropgate_redis_script_duration_seconds_count{script=\"admit\"}",
        "dropgate_http_request_duration_seconds_count",
        "dropgate_ledger_events_applied_total",
        "dropgate_worker_batch_events_count",
        "dropgate_worker_commit_duration_seconds_count",
        "dropgate_commit_lag_seconds",
        "dropgate_stream_backlog_events{sku=\"metered\"}",
        "dropgate_reconciler_drift_units{sku=\"metered\",counter=\"held\"}",
        "dropgate_holds{state=\"held\"}",
        "dropgate_gate_rebuilds_total",
        "dropgate_build_info{version=",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(series)),
            "missing {series}"
        );
    }
    assert_eq!(
        sample(
            &text,
            "dropgate_reconciler_drift_units{sku=\"metered\",counter=\"held\"}"
        ),
        Some(0.0)
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
    let env = vec![
        ("DATABASE_URL", format!("{PG_BASE}/{}", app.database)),
        ("REDIS_URL", app.redis_url.clone()),
        ("DROPGATE_KEY_PREFIX", app.prefix.clone()),
        ("DROPGATE_ADMIN_TOKEN", ADMIN.to_owned()),
        ("DROPGATE_STOREFRONT_TOKENS", STOREFRONT.to_owned()),
        ("DROPGATE_CUSTOMER_RPS", "0".to_owned()),
        ("DROPGATE_LISTEN", listen.to_string()),
        ("DROPGATE_SHUTDOWN_DELAY_MS", "2500".to_owned()),
    ];
    let mut server = Dropgate::spawn(&["serve"], &env, Some(listen));
    // A new connection per request: a pooled idle connection closed by the
    // shutdown would look like a reset that the server did not cause.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let url = format!("http://{listen}/v1/skus/drop/holds");
    let load = tokio::spawn(async move {
        join_all((0..REQUESTS).map(|i| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                tokio::time::sleep(Duration::from_millis(i * 2)).await;
                let sent = client
                    .post(url)
                    .bearer_auth(STOREFRONT)
                    .header("Idempotency-Key", format!("k{i}"))
                    .json(&json!({"customer_id": format!("c{i}"), "quantity": 1}))
                    .send()
                    .await;
                match sent {
                    Ok(response) => Ok(response.status().as_u16()),
                    Err(error) => Err(error.is_connect()),
                }
            }
        }))
        .await
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pid = server.pid().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
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
