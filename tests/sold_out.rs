//! Sold-out at the edge: a gatekeeper that heard the gate say a SKU has 0
//! available answers `sold_out` itself (one `GET` of the idempotency
//! record, no script) until units come back, which every gatekeeper hears
//! through Redis pub/sub. Two gatekeepers on one gate: the test's HTTP app
//! and a second one in the test process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::start_redis;
use common::{TestApp, assert_problem, body, spawn_app_with, test_config};
use dropgate::app::Dropgate;
use dropgate::domain::{Admission, CustomerId, IdempotencyKey, Quantity, SkuId};
use dropgate::telemetry::metric;
use serde_json::json;
use std::time::Duration;
use tokio::sync::watch;

/// Long enough that only a message (or a lost subscription) clears a flag
/// within a test.
const LONG_CACHE_MS: u64 = 10_000;

fn sku(id: &str) -> SkuId {
    SkuId::parse(id).unwrap()
}

/// A second gatekeeper on the app's stores, following units-back until
/// the returned sender is dropped.
async fn second_gatekeeper(app: &TestApp) -> (Dropgate, watch::Sender<bool>) {
    let stores = dropgate::config::StoreConfig {
        database_url: format!("{}/{}", common::PG_BASE, app.database),
        redis_url: app.redis_url.clone(),
        key_prefix: app.prefix.clone(),
        store_timeout_ms: 10_000,
    };
    let other = dropgate::startup::connect(&stores)
        .await
        .unwrap()
        .with_sold_out_cache(Duration::from_millis(LONG_CACHE_MS));
    let (stop, stopped) = watch::channel(false);
    let gate = other.gate.clone();
    tokio::spawn(async move { gate.follow_units_back_until(stopped).await });
    (other, stop)
}

async fn admit(gatekeeper: &Dropgate, sku_id: &str, key: &str, customer: &str) -> Admission {
    gatekeeper
        .admit(
            &sku(sku_id),
            &CustomerId::parse(customer).unwrap(),
            Quantity::parse(1).unwrap(),
            &IdempotencyKey::parse(key).unwrap(),
        )
        .await
        .unwrap()
        .outcome
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn app_with_long_cache(redis_url: Option<String>) -> TestApp {
    let mut config = test_config();
    config.sold_out_cache_ms = LONG_CACHE_MS;
    config.no_reaper = true;
    if let Some(url) = redis_url {
        config.stores.redis_url = url;
    }
    spawn_app_with(config).await
}

fn script_calls(app: &TestApp) -> u64 {
    app.metrics
        .histogram(
            metric::REDIS_SCRIPT_DURATION_SECONDS,
            &[("script", "admit")],
        )
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_clears_the_flag_on_every_gatekeeper_and_the_next_admission_gets_the_unit() {
    let app = app_with_long_cache(None).await;
    let (other, _following) = second_gatekeeper(&app).await;
    app.create_sku("drop", json!({"on_hand": 1})).await;
    wait_until("both subscriptions", || {
        app.app.gate.sold_out_cache().is_live() && other.gate.sold_out_cache().is_live()
    })
    .await;
    let held = app.admit("drop", "k1", "c-1", 1).await;
    let hold = body(held).await["hold_id"].as_str().unwrap().to_owned();

    // Each gatekeeper hears the gate say 0 available once, then answers
    // itself: no script call.
    assert_problem(app.admit("drop", "k2", "c-2", 1).await, 409, "sold_out").await;
    assert!(matches!(
        admit(&other, "drop", "k3", "c-3").await,
        Admission::SoldOut { .. }
    ));
    let calls = script_calls(&app);
    for i in 0..5 {
        let response = app.admit("drop", &format!("e{i}"), "c-4", 1).await;
        assert_problem(response, 409, "sold_out").await;
    }
    assert_eq!(script_calls(&app), calls, "answered at the edge");
    assert_eq!(
        app.metrics.counter(metric::ADMISSIONS_AT_EDGE_TOTAL, &[]),
        5
    );
    assert!(other.gate.sold_out_cache().is_flagged(&sku("drop")));

    // One release, on the first gatekeeper: the second hears it.
    assert_eq!(app.hold_action(&hold, "release").await.status(), 200);
    assert!(!app.app.gate.sold_out_cache().is_flagged(&sku("drop")));
    wait_until("the units-back message", || {
        !other.gate.sold_out_cache().is_flagged(&sku("drop"))
    })
    .await;
    assert!(matches!(
        admit(&other, "drop", "k5", "c-5").await,
        Admission::Held { .. }
    ));
    assert_eq!(app.sku("drop").await["held"], 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_got_a_hold_still_replays_after_sell_out_and_retry_after_stays_honest() {
    let app = app_with_long_cache(None).await;
    app.create_sku("drop", json!({"on_hand": 1, "hold_ttl_ms": 60000}))
        .await;
    wait_until("the subscription", || {
        app.app.gate.sold_out_cache().is_live()
    })
    .await;
    let first = app.admit("drop", "k1", "c-1", 1).await;
    assert_eq!(first.status(), 201);
    let first = body(first).await;
    let sold_out = app.admit("drop", "k2", "c-2", 1).await;
    let gate_retry: u64 = sold_out.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_problem(sold_out, 409, "sold_out").await;
    assert!(app.app.gate.sold_out_cache().is_flagged(&sku("drop")));

    let calls = script_calls(&app);
    let replay = app.admit("drop", "k1", "c-1", 1).await;
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(body(replay).await, first);
    assert_problem(
        app.admit("drop", "k1", "c-1", 2).await,
        422,
        "idempotency_key_reused",
    )
    .await;
    let edge = app.admit("drop", "k3", "c-3", 1).await;
    let edge_retry: u64 = edge.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_problem(edge, 409, "sold_out").await;
    assert!(
        (1..=gate_retry).contains(&edge_retry),
        "Retry-After {edge_retry} s at the edge, {gate_retry} s from the gate"
    );
    assert_eq!(script_calls(&app), calls, "all three at the edge");
    assert_eq!(
        app.metrics.counter(metric::ADMISSIONS_AT_EDGE_TOTAL, &[]),
        3
    );
    // Rejections at the edge write nothing either.
    let mut redis = app.redis().await;
    let records: Vec<String> = redis::cmd("KEYS")
        .arg(app.key("drop", "i:*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(records, vec![app.key("drop", "i:k1")]);
    assert_eq!(app.sku("drop").await["held"], 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscription_clears_every_flag() {
    // A private Redis: killing its pub/sub clients disturbs no other test.
    let redis = start_redis().await;
    let app = app_with_long_cache(Some(redis.url())).await;
    for name in ["drop-a", "drop-b"] {
        app.create_sku(name, json!({"on_hand": 0})).await;
    }
    wait_until("the subscription", || {
        app.app.gate.sold_out_cache().is_live()
    })
    .await;
    for name in ["drop-a", "drop-b"] {
        assert_problem(app.admit(name, "k", "c-1", 1).await, 409, "sold_out").await;
        assert!(app.app.gate.sold_out_cache().is_flagged(&sku(name)));
    }

    let mut conn = app.redis().await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(killed, 1);
    wait_until("the flags to go", || {
        !app.app.gate.sold_out_cache().is_flagged(&sku("drop-a"))
            && !app.app.gate.sold_out_cache().is_flagged(&sku("drop-b"))
    })
    .await;
    // Subscribed again, it flags afresh.
    wait_until("the subscription again", || {
        app.app.gate.sold_out_cache().is_live()
    })
    .await;
    assert_problem(app.admit("drop-a", "k", "c-1", 1).await, 409, "sold_out").await;
    assert!(app.app.gate.sold_out_cache().is_flagged(&sku("drop-a")));
    app.stop().await;
    drop(redis);
}
