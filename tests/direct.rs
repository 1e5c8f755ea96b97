//! Postgres-direct admission, the benchmark peer (`DROPGATE_ADMISSION=
//! postgres`): same API, same guarantees. And what happens instead of a
//! fallback while Redis is away: 503, nothing admitted anywhere.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::start_redis;
use common::{TestApp, assert_problem, body, spawn_app_with, test_config};
use dropgate::app::AdmissionMode;
use dropgate::reaper::Reaper;
use futures::future::join_all;
use serde_json::json;
use std::time::Duration;

async fn admit_all(app: &TestApp, sku: &str, prefix: &str, n: usize) -> Vec<u16> {
    join_all((0..n).map(|i| async move {
        app.admit(sku, &format!("{prefix}{i}"), &format!("{prefix}{i}"), 1)
            .await
            .status()
            .as_u16()
    }))
    .await
}

fn held(statuses: &[u16]) -> usize {
    statuses.iter().filter(|s| **s == 201).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_admission_keeps_every_guarantee() {
    let mut config = test_config();
    config.admission = AdmissionMode::Postgres;
    let app = spawn_app_with(config).await;
    app.create_sku("drop", json!({"on_hand": 50})).await;

    let statuses = admit_all(&app, "drop", "c", 500).await;

    assert_eq!(held(&statuses), 50);
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 450);
    let sku = app.sku("drop").await;
    assert_eq!(
        (sku["held"].as_i64(), sku["available"].as_i64()),
        (Some(50), Some(0))
    );
    assert_eq!(app.ledger_counts("drop").await, (50, 50, 0));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_admission_replays_limits_confirms_and_expires() {
    // The test is the reaper: Postgres's clock decides which holds are due,
    // so their expiry is placed either side of its now.
    let mut config = test_config();
    config.admission = AdmissionMode::Postgres;
    config.no_reaper = true;
    let app = spawn_app_with(config).await;
    app.create_sku(
        "drop",
        json!({"on_hand": 10, "per_customer_limit": 2, "hold_ttl_ms": 60000}),
    )
    .await;

    let one_key = join_all((0..20).map(|_| async {
        let response = app.admit("drop", "same", "c-1", 1).await;
        (
            response.status().as_u16(),
            body(response).await["hold_id"].clone(),
        )
    }))
    .await;
    assert!(
        one_key
            .iter()
            .all(|(s, id)| *s == 201 && *id == one_key[0].1),
        "{one_key:?}"
    );
    assert_problem(
        app.admit("drop", "same", "c-1", 2).await,
        422,
        "idempotency_key_reused",
    )
    .await;

    let greedy = join_all((0..10).map(|i| {
        let app = &app;
        async move {
            app.admit("drop", &format!("g{i}"), "greedy", 1)
                .await
                .status()
                .as_u16()
        }
    }))
    .await;
    assert_eq!(
        held(&greedy),
        2,
        "the per-customer limit holds under concurrency"
    );

    let hold = one_key[0].1.as_str().unwrap().to_owned();
    let confirmed = body(app.hold_action(&hold, "confirm").await).await;
    assert_eq!(
        (confirmed["state"].as_str(), confirmed["durable"].as_bool()),
        (Some("confirmed"), Some(true))
    );
    assert_problem(
        app.hold_action(&hold, "release").await,
        409,
        "hold_confirmed",
    )
    .await;
    assert_eq!(app.ledger_counts("drop").await, (10, 2, 1));

    // The Postgres-direct reaper returns the greedy customer's units, each
    // once its expiry has passed and not before.
    let pool = app.pg().await;
    let greedy: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT hold_id FROM holds WHERE customer_id = 'greedy' AND state = 'held' ORDER BY hold_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(greedy.len(), 2);
    let expires_in = async |hold: uuid::Uuid, interval: &str| {
        sqlx::query("UPDATE holds SET expires_at = now() + $2::interval WHERE hold_id = $1")
            .bind(hold)
            .bind(interval)
            .execute(&pool)
            .await
            .unwrap();
    };
    expires_in(greedy[0], "-1 millisecond").await;
    expires_in(greedy[1], "1 hour").await;
    let reaper = Reaper::new(app.app.clone());
    assert_eq!(reaper.run_once().await.unwrap(), 1);
    assert_eq!(app.ledger_counts("drop").await, (10, 1, 1));
    assert_eq!(app.sku("drop").await["available"], 8);
    expires_in(greedy[1], "-1 millisecond").await;
    assert_eq!(reaper.run_once().await.unwrap(), 1);
    assert_eq!(reaper.run_once().await.unwrap(), 0, "expired once");
    pool.close().await;
    assert_eq!(app.ledger_counts("drop").await, (10, 0, 1));
    assert_eq!(app.sku("drop").await["available"], 9);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_redis_is_away_admissions_answer_503_and_nothing_is_admitted() {
    let mut redis = start_redis().await;
    let mut config = test_config();
    config.stores.redis_url = redis.url();
    config.stores.store_timeout_ms = 500;
    // The reconciler rebuilds the gate after Redis returns: soon.
    config.reconciler.interval = Duration::from_millis(50);
    let app = spawn_app_with(config).await;
    app.create_sku("drop", json!({"on_hand": 60})).await;
    assert_eq!(held(&admit_all(&app, "drop", "a", 20).await), 20);
    app.wait_for_ledger("drop").await;

    redis.kill();
    let during = admit_all(&app, "drop", "b", 20).await;
    assert!(
        during.iter().all(|s| *s == 503),
        "no store decides while the gate is away: {during:?}"
    );
    let response = app.admit("drop", "b0", "b0", 1).await;
    assert!(response.headers().contains_key("retry-after"));
    assert_problem(response, 503, "unavailable").await;
    assert_eq!(app.ledger_counts("drop").await, (60, 20, 0));

    // Restarted empty: the gate is rebuilt from the ledger, which has the
    // first 20 holds, so exactly the 40 units left are admitted.
    redis.restart().await.expect("redis-server restarts");
    let ready = async {
        for _ in 0..100 {
            let status = app
                .client
                .get(app.url("/readyz"))
                .send()
                .await
                .unwrap()
                .status();
            if status == 200 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(
        ready.await,
        "the reconciler rebuilt the gate from the ledger"
    );
    let after = admit_all(&app, "drop", "c", 60).await;
    assert_eq!(held(&after), 40, "exactly the units left, none twice");
    let sku = app.sku("drop").await;
    assert_eq!(
        (sku["held"].as_i64(), sku["available"].as_i64()),
        (Some(60), Some(0))
    );
    app.wait_for_ledger("drop").await;
    let report = dropgate::audit::audit(&app.app).await.unwrap();
    assert!(report.ok(), "{}", report.table());
    assert_eq!(app.ledger_counts("drop").await, (60, 60, 0));
    app.stop().await;
}
