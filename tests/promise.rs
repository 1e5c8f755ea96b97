//! The promise off the happy path: no single event stops the ledger, no
//! event leaves the stream before the ledger has it, and a gate built from
//! another ledger is never served.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::PgProxy;
use common::{ADMIN, assert_problem, body, spawn_app, spawn_app_with, test_config};
use dropgate::ledger::Resolution;
use serde_json::json;
use std::time::Duration;

async fn admit_n(app: &common::TestApp, sku: &str, prefix: &str, n: usize) -> usize {
    let mut held = 0;
    for i in 0..n {
        let key = format!("{prefix}{i}");
        if app.admit(sku, &key, &key, 1).await.status() == 201 {
            held += 1;
        }
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poisoned_event_is_set_aside_and_everything_else_keeps_committing() {
    let app = spawn_app().await;
    app.create_sku("a", json!({"on_hand": 10})).await;
    app.create_sku("b", json!({"on_hand": 10})).await;
    assert_eq!(admit_n(&app, "a", "a-first-", 2).await, 2);
    app.wait_for_ledger("a").await;

    // An event Postgres refuses however often it is tried: a NUL in text.
    let mut redis = app.redis().await;
    let epoch: i64 = redis::cmd("HGET")
        .arg(app.key("a", "stock"))
        .arg("epoch")
        .query_async(&mut redis)
        .await
        .unwrap();
    let poison = uuid::Uuid::new_v4();
    let _: String = redis::cmd("XADD")
        .arg(app.key("a", "events"))
        .arg(format!("{epoch}-*"))
        .arg(&[
            ("t", "adjust".to_owned()),
            ("i", poison.to_string()),
            ("m", "1795000000000".to_owned()),
            ("d", "0".to_owned()),
            ("l", "0".to_owned()),
            ("ttl", "600000".to_owned()),
            ("x", "1".to_owned()),
            ("r", "bad\u{0}reason".to_owned()),
        ])
        .query_async(&mut redis)
        .await
        .unwrap();

    // Later events of the same SKU and of another SKU still commit.
    assert_eq!(admit_n(&app, "a", "a-later-", 3).await, 3);
    assert_eq!(admit_n(&app, "b", "b-", 4).await, 4);
    app.wait_for_ledger("a").await;
    app.wait_for_ledger("b").await;
    assert_eq!(app.ledger_counts("a").await, (10, 5, 0));
    assert_eq!(app.ledger_counts("b").await, (10, 4, 0));

    let letters = app.app.ledger.dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        (
            letters[0].event_id,
            letters[0].sku.as_str(),
            letters[0].state.as_str()
        ),
        (poison, "a", "open")
    );
    assert!(
        letters[0].event.contains("bad\\u0000reason"),
        "{}",
        letters[0].event
    );
    assert_eq!(app.app.ledger.open_dead_letters().await.unwrap(), 1);
    let report = dropgate::audit::audit(&app.app).await.unwrap();
    assert!(!report.ok(), "an open dead letter is a breach");

    // The operator voids it: audited, and the audit passes again.
    let outcome = app
        .app
        .ledger
        .resolve_dead_letter(poison, Resolution::Void, "injected by a test")
        .await
        .unwrap();
    assert_eq!(outcome.as_deref(), Some("voided"));
    assert_eq!(
        app.app
            .ledger
            .resolve_dead_letter(poison, Resolution::Void, "twice")
            .await
            .unwrap(),
        None,
        "a dead letter is resolved once"
    );
    let pool = app.pg().await;
    let reconciles: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM movements WHERE sku = 'a' AND kind = 'reconcile' AND reason LIKE '%voided%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    assert_eq!(reconciles, 1);
    let report = dropgate::audit::audit(&app.app).await.unwrap();
    assert!(report.ok(), "{}", report.table());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gate_built_from_another_ledger_is_rebuilt_from_this_one() {
    // The first deployment: its gate in Redis, its holds in its ledger.
    let mut config = test_config();
    (config.no_worker, config.no_reaper, config.no_reconciler) = (true, true, true);
    let first = spawn_app_with(config).await;
    first.create_sku("drop", json!({"on_hand": 10})).await;
    assert_eq!(admit_n(&first, "drop", "old-", 3).await, 3);
    let sku = dropgate::domain::SkuId::parse("drop").unwrap();
    first.app.flush(&sku, None).await.unwrap();
    let old_epoch = first.app.gate.epoch().await.unwrap().unwrap();

    // A second one on the same Redis and prefix with a new, empty ledger.
    let mut config = test_config();
    config.stores.key_prefix = first.prefix.clone();
    let second = spawn_app_with(config).await;
    let epoch = second.app.gate.epoch().await.unwrap().unwrap();
    assert!(
        epoch > old_epoch,
        "the new epoch fences the old gate's events"
    );
    assert_eq!(
        second.app.gate.built_from().await.unwrap(),
        Some(second.app.ledger.ledger_id().await.unwrap())
    );
    // The old gate's SKU is not this ledger's: not served.
    assert_problem(
        second.admit("drop", "new-0", "new-0", 1).await,
        404,
        "not_found",
    )
    .await;
    assert!(second.app.ledger.all_skus().await.unwrap().is_empty());

    second.create_sku("drop", json!({"on_hand": 5})).await;
    assert_eq!(admit_n(&second, "drop", "new-", 8).await, 5);
    second.wait_for_ledger("drop").await;
    assert_eq!(second.ledger_counts("drop").await, (5, 5, 0));
    let report = dropgate::audit::audit(&second.app).await.unwrap();
    assert!(report.ok(), "{}", report.table());
    // The first ledger kept exactly what its gate gave it.
    assert_eq!(first.ledger_counts("drop").await, (10, 3, 0));
    second.stop().await;
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gate_ahead_of_the_ledger_is_rebuilt_with_a_new_epoch() {
    let app = spawn_app().await;
    app.create_sku("drop", json!({"on_hand": 10})).await;
    assert_eq!(admit_n(&app, "drop", "k-", 4).await, 4);
    app.wait_for_ledger("drop").await;
    // As if the ledger were restored from before the gate's last rebuild.
    let mut redis = app.redis().await;
    let () = redis::cmd("SET")
        .arg(format!("{}:gate", app.prefix))
        .arg(99)
        .query_async(&mut redis)
        .await
        .unwrap();
    let epoch = dropgate::rebuild::ensure_gate(&app.app).await.unwrap();
    assert_eq!(epoch, 100);
    assert_eq!(app.app.ledger.epoch().await.unwrap(), 100);
    assert_eq!(app.sku("drop").await["held"], 4);
    assert_eq!(admit_n(&app, "drop", "after-", 10).await, 6);
    app.wait_for_ledger("drop").await;
    assert_eq!(app.ledger_counts("drop").await, (10, 10, 0));
    let report = dropgate::audit::audit(&app.app).await.unwrap();
    assert!(report.ok(), "{}", report.table());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_of_a_sku_the_ledger_does_not_know_stay_in_the_stream() {
    let app = spawn_app().await;
    app.create_sku("drop", json!({"on_hand": 10})).await;
    assert_eq!(admit_n(&app, "drop", "k-", 2).await, 2);
    app.wait_for_ledger("drop").await;
    // The worker acknowledged (and trimmed) what it applied: nothing is
    // left in the stream, so nothing is pending.
    app.wait_until_trimmed("drop").await;
    let mut redis = app.redis().await;
    assert_eq!(pending_count(&app, &mut redis).await, 0);

    // The ledger loses the SKU (a restore from before it was created).
    let pool = app.pg().await;
    sqlx::query("TRUNCATE movements, holds, dead_letters, skus")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert_eq!(app.admit("drop", "k-late", "k-late", 1).await.status(), 201);

    let mut unknown = serde_json::Value::Null;
    for _ in 0..100 {
        let response = app.get("/readyz").await;
        let body: serde_json::Value = response.json().await.unwrap();
        if body["unknown_skus"] == json!(["drop"]) {
            unknown = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(unknown["status"], "not ready", "{unknown}");
    // Nothing the ledger could not record is admitted any more.
    let response = app.admit("drop", "k-after", "k-after", 1).await;
    assert!(response.headers().contains_key("retry-after"));
    assert_problem(response, 503, "unavailable").await;
    // The event was delivered to the worker and never acknowledged.
    assert_eq!(pending_count(&app, &mut redis).await, 1);
    app.stop().await;
}

/// Entries of the SKU's stream delivered to a worker and not acknowledged.
async fn pending_count(
    app: &common::TestApp,
    redis: &mut redis::aio::MultiplexedConnection,
) -> i64 {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(app.key("drop", "events"))
        .arg("ledger")
        .query_async(redis)
        .await
        .unwrap();
    match summary {
        redis::Value::Array(fields) => match fields.first() {
            Some(redis::Value::Int(count)) => *count,
            other => panic!("XPENDING count: {other:?}"),
        },
        other => panic!("XPENDING: {other:?}"),
    }
}

async fn adjust(
    app: &common::TestApp,
    key: Option<&str>,
    delta: i64,
    reason: &str,
) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/v1/skus/drop/adjustments"))
        .bearer_auth(ADMIN)
        .json(&json!({"delta": delta, "reason": reason}));
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retried_stock_changes_under_a_postgres_cut_move_stock_once_per_key() {
    let mut proxy = PgProxy::start().await;
    let mut config = test_config();
    proxy.route(&mut config);
    config.stores.store_timeout_ms = 1000;
    let app = spawn_app_with(config).await;
    app.create_sku("drop", json!({"on_hand": 10})).await;
    assert_eq!(admit_n(&app, "drop", "k-", 3).await, 3);

    proxy.cut().await;
    // The gate decides: each change answers 2xx once it happened, with the
    // ledger away; retries with the same key replay, they do not apply.
    let mut answered = 0;
    for (key, delta) in [("restock-1", 5), ("damaged-1", -2)] {
        for attempt in 0..3 {
            let response = adjust(&app, Some(key), delta, "warehouse count").await;
            assert_eq!(response.status(), 201, "{key} attempt {attempt}");
            let replayed = response.headers().get("idempotent-replayed").is_some();
            assert_eq!(replayed, attempt > 0, "{key} attempt {attempt}");
            let sku = body(response).await;
            if attempt == 0 {
                answered += delta;
            }
            assert_eq!(
                sku["on_hand"],
                10 + answered,
                "{key}: the first answer, replayed"
            );
        }
    }
    // Another change under a used key is refused and changes nothing.
    assert_problem(
        adjust(&app, Some("restock-1"), 7, "warehouse count").await,
        422,
        "idempotency_key_reused",
    )
    .await;
    // A PUT needs the ledger first (the SKU's number): 503, nothing moved.
    let put = app
        .client
        .put(app.url("/v1/skus/drop"))
        .bearer_auth(ADMIN)
        .header("Idempotency-Key", "put-1")
        .json(&json!({"on_hand": 50}))
        .send()
        .await
        .unwrap();
    assert_problem(put, 503, "unavailable").await;
    assert_eq!(app.sku("drop").await["on_hand"], 13);

    proxy.restore().await;
    for attempt in 0..2 {
        let put = app
            .client
            .put(app.url("/v1/skus/drop"))
            .bearer_auth(ADMIN)
            .header("Idempotency-Key", "put-1")
            .json(&json!({"on_hand": 50}))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 200, "attempt {attempt}");
        assert_eq!(
            put.headers().get("idempotent-replayed").is_some(),
            attempt > 0
        );
    }
    // Without a key, each request is its own change.
    assert_eq!(adjust(&app, None, 1, "found one").await.status(), 201);
    assert_eq!(app.sku("drop").await["on_hand"], 51);
    app.wait_for_ledger("drop").await;
    assert_eq!(app.ledger_counts("drop").await, (51, 3, 0));
    let pool = app.pg().await;
    let adjustments: Vec<i64> = sqlx::query_scalar(
        "SELECT quantity_delta FROM movements WHERE sku = 'drop' AND kind = 'adjustment' ORDER BY occurred_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    assert_eq!(
        adjustments,
        vec![10, 5, -2, 37, 1],
        "one movement per change"
    );
    let report = dropgate::audit::audit(&app.app).await.unwrap();
    assert!(report.ok(), "{}", report.table());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sku_the_ledger_has_and_the_gate_lacks_is_restored_by_the_reconciler() {
    let mut config = test_config();
    config.no_reconciler = true;
    let app = spawn_app_with(config).await;
    // As when a PUT made the ledger's row and Postgres went away before
    // the gate step: the SKU is in the ledger only.
    let sku = dropgate::domain::SkuId::parse("ghost").unwrap();
    let settings = dropgate::domain::SkuSettings::parse(0, Some(2), None, None).unwrap();
    app.app.ledger.ensure_sku(&sku, &settings).await.unwrap();
    assert_problem(app.get("/v1/skus/ghost").await, 404, "not_found").await;

    // A catalogue larger than a pass's sweep: the ledger's page of the
    // next pass no longer holds the SKU.
    for n in 0..4 {
        app.create_sku(&format!("z-{n}"), json!({"on_hand": 1}))
            .await;
    }
    let config = dropgate::reconciler::Config {
        sweep_skus: 2,
        ..Default::default()
    };

    // Missing in one pass may be a PUT half-way; missing in two is restored.
    let reconciler = dropgate::reconciler::Reconciler::with_config(app.app.clone(), config);
    let first = reconciler.run_once().await.unwrap();
    assert_eq!(first.missing, vec![sku.clone()], "{first:?}");
    assert_problem(app.get("/v1/skus/ghost").await, 404, "not_found").await;
    let second = reconciler.run_once().await.unwrap();
    assert!(second.failed.is_empty(), "{second:?}");
    assert_eq!(
        second.missing,
        vec![sku.clone()],
        "looked at again: {second:?}"
    );
    let restored = app.sku("ghost").await;
    assert_eq!(
        (
            restored["on_hand"].as_i64(),
            restored["per_customer_limit"].as_i64()
        ),
        (Some(0), Some(2))
    );
    // It is an ordinary SKU again: PUT updates it, admissions work.
    let put = app
        .put_sku("ghost", json!({"on_hand": 4, "per_customer_limit": 2}))
        .await;
    assert_eq!(put.status(), 200);
    assert_eq!(admit_n(&app, "ghost", "g-", 6).await, 4);
    app.wait_for_ledger("ghost").await;
    assert_eq!(app.ledger_counts("ghost").await, (4, 4, 0));
    let report = dropgate::audit::audit(&app.app).await.unwrap();
    assert!(report.ok(), "{}", report.table());
    app.stop().await;
}
