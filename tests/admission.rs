//! Admission under real concurrency, idempotency and limits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_problem, body, spawn_app, spawn_app_with, test_config};
use futures::future::join_all;
use serde_json::json;
use std::collections::HashSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_concurrent_admissions_for_stock_100_hold_exactly_100() {
    let app = spawn_app().await;
    app.create_sku("hot", json!({"on_hand": 100})).await;

    let requests = (0..2000).map(|i| {
        let app = &app;
        async move {
            let response = app
                .admit("hot", &format!("key-{i}"), &format!("c-{i}"), 1)
                .await;
            let status = response.status().as_u16();
            let body = body(response).await;
            (status, body)
        }
    });
    let answers = join_all(requests).await;

    let held: Vec<_> = answers.iter().filter(|(s, _)| *s == 201).collect();
    let sold_out = answers
        .iter()
        .filter(|(s, b)| *s == 409 && b["code"] == "sold_out")
        .count();
    let mut statuses: Vec<String> = answers
        .iter()
        .map(|(s, b)| format!("{s} {}", b["detail"]))
        .collect();
    statuses.sort();
    statuses.dedup();
    assert_eq!(held.len(), 100, "statuses seen: {statuses:?}");
    assert_eq!(sold_out, 1900, "statuses seen: {statuses:?}");
    let ids: HashSet<_> = held.iter().map(|(_, b)| b["hold_id"].to_string()).collect();
    assert_eq!(ids.len(), 100, "every hold is distinct");

    let sku = app.sku("hot").await;
    assert_eq!(
        (sku["available"].as_i64(), sku["held"].as_i64()),
        (Some(0), Some(100))
    );
    // Batched (DROPGATE_ADMIT_BATCH_MAX, on by default) or answered at the
    // edge once sold out: every admission decided exactly once.
    let (_, through_scripts) = app
        .metrics
        .histogram(dropgate::telemetry::metric::ADMIT_BATCH_SIZE, &[]);
    let at_edge = app
        .metrics
        .counter(dropgate::telemetry::metric::ADMISSIONS_AT_EDGE_TOTAL, &[]);
    assert_eq!(through_scripts as u64 + at_edge, 2000);
    // The 1900 rejections left no trace: one idempotency record per hold.
    let mut redis = app.redis().await;
    let records: Vec<String> = redis::cmd("KEYS")
        .arg(app.key("hot", "i:*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(records.len(), 100);

    app.wait_for_ledger("hot").await;
    assert_eq!(app.ledger_counts("hot").await, (100, 100, 0));
    let pool = app.pg().await;
    let holds: i64 = sqlx::query_scalar("SELECT count(*) FROM holds WHERE state = 'held'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let admits: i64 = sqlx::query_scalar("SELECT count(*) FROM movements WHERE kind = 'admit'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((holds, admits), (100, 100));
    pool.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_simultaneous_requests_with_one_key_make_one_hold() {
    let app = spawn_app().await;
    app.create_sku("drop", json!({"on_hand": 10})).await;

    let answers = join_all((0..50).map(|_| async {
        let response = app.admit("drop", "same-key", "c-1", 2).await;
        let replayed = response.headers().get("idempotent-replayed").is_some();
        (response.status().as_u16(), replayed, body(response).await)
    }))
    .await;

    assert!(answers.iter().all(|(s, _, _)| *s == 201));
    let ids: HashSet<_> = answers
        .iter()
        .map(|(_, _, b)| b["hold_id"].to_string())
        .collect();
    assert_eq!(ids.len(), 1, "one hold for one key");
    assert_eq!(
        answers.iter().filter(|(_, replayed, _)| *replayed).count(),
        49
    );
    let sku = app.sku("drop").await;
    assert_eq!(
        (sku["held"].as_i64(), sku["available"].as_i64()),
        (Some(2), Some(8))
    );
    app.stop().await;
}

#[tokio::test]
async fn replay_returns_the_original_answer_and_takes_no_second_unit() {
    let app = spawn_app().await;
    app.create_sku("drop", json!({"on_hand": 1})).await;

    let first = app.admit("drop", "k1", "c-1", 1).await;
    assert_eq!(first.status(), 201);
    let location = first.headers()["location"].to_str().unwrap().to_owned();
    let first = body(first).await;
    assert_eq!(
        location,
        format!("/v1/holds/{}", first["hold_id"].as_str().unwrap())
    );
    assert_eq!(first["state"], "held");
    assert_eq!(first["durable"], false);

    let again = app.admit("drop", "k1", "c-1", 1).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(body(again).await, first);

    // A rejection is not stored: once the unit is back, the same key is
    // decided afresh and gets it.
    let sold_out = app.admit("drop", "k2", "c-2", 1).await;
    assert_problem(sold_out, 409, "sold_out").await;
    app.hold_action(first["hold_id"].as_str().unwrap(), "release")
        .await;
    let retry = app.admit("drop", "k2", "c-2", 1).await;
    assert_eq!(retry.status(), 201);
    assert!(retry.headers().get("idempotent-replayed").is_none());

    // Keys are scoped per SKU.
    app.create_sku("other", json!({"on_hand": 1})).await;
    assert_eq!(app.admit("other", "k1", "c-1", 1).await.status(), 201);

    let sku = app.sku("drop").await;
    assert_eq!(
        (sku["held"].as_i64(), sku["available"].as_i64()),
        (Some(1), Some(0))
    );
    app.stop().await;
}

#[tokio::test]
async fn reusing_a_key_with_another_body_is_refused() {
    let app = spawn_app().await;
    app.create_sku("drop", json!({"on_hand": 5})).await;
    assert_eq!(app.admit("drop", "k", "c-1", 1).await.status(), 201);
    assert_problem(
        app.admit("drop", "k", "c-1", 2).await,
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_problem(
        app.admit("drop", "k", "c-2", 1).await,
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(app.sku("drop").await["held"], 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_per_customer_limit_holds_under_concurrency() {
    let app = spawn_app().await;
    app.create_sku("drop", json!({"on_hand": 100, "per_customer_limit": 3}))
        .await;

    // 40 requests of one customer at once, each with its own key.
    let answers = join_all((0..40).map(|i| {
        let app = &app;
        async move {
            let response = app.admit("drop", &format!("k{i}"), "greedy", 1).await;
            (response.status().as_u16(), body(response).await)
        }
    }))
    .await;
    assert_eq!(answers.iter().filter(|(s, _)| *s == 201).count(), 3);
    let refused: Vec<_> = answers.iter().filter(|(s, _)| *s == 409).collect();
    assert_eq!(refused.len(), 37);
    assert!(
        refused
            .iter()
            .all(|(_, b)| b["code"] == "limit_exceeded" && b["per_customer_limit"] == 3)
    );

    // More than the customer may still take is limit_exceeded, not validation.
    assert_problem(
        app.admit("drop", "big", "other", 4).await,
        409,
        "limit_exceeded",
    )
    .await;
    assert_eq!(app.sku("drop").await["held"], 3);
    app.stop().await;
}

#[tokio::test]
async fn confirmed_units_count_toward_the_limit_and_released_ones_do_not() {
    let app = spawn_app().await;
    app.create_sku("drop", json!({"on_hand": 10, "per_customer_limit": 2}))
        .await;
    let a = body(app.admit("drop", "a", "c", 1).await).await;
    let b = body(app.admit("drop", "b", "c", 1).await).await;
    assert_eq!(
        app.hold_action(a["hold_id"].as_str().unwrap(), "confirm")
            .await
            .status(),
        200
    );
    assert_problem(app.admit("drop", "c", "c", 1).await, 409, "limit_exceeded").await;
    assert_eq!(
        app.hold_action(b["hold_id"].as_str().unwrap(), "release")
            .await
            .status(),
        200
    );
    assert_eq!(app.admit("drop", "d", "c", 1).await.status(), 201);
    assert_problem(app.admit("drop", "e", "c", 1).await, 409, "limit_exceeded").await;
    app.stop().await;
}

#[tokio::test]
async fn sold_out_carries_retry_after_only_while_holds_are_live() {
    let app = spawn_app().await;
    app.create_sku("drop", json!({"on_hand": 1, "hold_ttl_ms": 5000}))
        .await;
    let hold = body(app.admit("drop", "k1", "c-1", 1).await).await;

    let response = app.admit("drop", "k2", "c-2", 1).await;
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry_after), "{retry_after}");
    assert_problem(response, 409, "sold_out").await;

    assert_eq!(
        app.hold_action(hold["hold_id"].as_str().unwrap(), "confirm")
            .await
            .status(),
        200
    );
    let response = app.admit("drop", "k3", "c-3", 1).await;
    assert!(
        response.headers().get("retry-after").is_none(),
        "nothing held, nothing to wait for"
    );
    assert_problem(response, 409, "sold_out").await;
    app.stop().await;
}

#[tokio::test]
async fn too_many_requests_get_429_with_an_honest_retry_after() {
    let mut config = test_config();
    config.customer_rps = 3;
    let app = spawn_app_with(config).await;
    app.create_sku("drop", json!({"on_hand": 100})).await;

    let mut statuses = Vec::new();
    for i in 0..5 {
        let response = app.admit("drop", &format!("k{i}"), "fast", 1).await;
        if response.status() == 429 {
            assert_eq!(response.headers()["retry-after"], "1");
            assert_problem(response, 429, "rate_limited").await;
            statuses.push(429);
        } else {
            statuses.push(response.status().as_u16());
        }
    }
    assert_eq!(statuses, vec![201, 201, 201, 429, 429]);
    // Another customer is not affected, and refusals took no stock.
    assert_eq!(app.admit("drop", "x", "calm", 1).await.status(), 201);
    assert_eq!(app.sku("drop").await["held"], 4);
    app.stop().await;
}

#[tokio::test]
async fn the_global_limit_sheds_load() {
    let mut config = test_config();
    config.global_rps = 2;
    let app = spawn_app_with(config).await;
    app.create_sku("drop", json!({"on_hand": 100})).await;
    let mut statuses = Vec::new();
    for i in 0..4 {
        statuses.push(
            app.admit("drop", &format!("k{i}"), &format!("c{i}"), 1)
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, vec![201, 201, 429, 429]);
    app.stop().await;
}

#[tokio::test]
async fn a_batch_entry_is_applied_once_even_when_delivered_again() {
    use dropgate::domain::{
        CustomerId, HoldId, HoldIdKey, IdempotencyKey, Position, Quantity, SkuId,
    };
    use dropgate::gate::{Admit, AdmitBatch, Fenced, MAX_EVENT_BACKLOG};
    use std::collections::BTreeMap;

    // No background worker: the test applies the stream itself.
    let mut config = test_config();
    (config.no_worker, config.no_reconciler) = (true, true);
    let app = spawn_app_with(config).await;
    app.create_sku("drop", json!({"on_hand": 10})).await;
    let sku = SkuId::parse("drop").unwrap();
    let gate = &app.app.gate;
    let sku_no = gate.sku_number(&sku).await.unwrap().unwrap();
    let admissions: Vec<Admit> = (0..3)
        .map(|i| {
            Admit::new(
                sku.clone(),
                // Serials far above any the app itself issues here.
                HoldId::issue(
                    &HoldIdKey::new(b"test"),
                    (1 << 40) + i,
                    sku_no,
                    Quantity::parse(1).unwrap(),
                ),
                CustomerId::parse(&format!("c-{i}")).unwrap(),
                Quantity::parse(1).unwrap(),
                IdempotencyKey::parse(&format!("k-{i}")).unwrap(),
            )
        })
        .collect();
    let replies = gate
        .admit_batch(&AdmitBatch {
            sku: sku.clone(),
            admissions,
            backlog_limit: MAX_EVENT_BACKLOG,
        })
        .await
        .unwrap();
    assert!(replies.iter().all(|r| matches!(r, Fenced::Open(_))));

    // The entry after the SKU's creation, as a worker reads it; applied, then
    // delivered again (a worker killed before its XACK).
    let ledger_sku = app.app.ledger.sku(&sku).await.unwrap().unwrap();
    let first_position = Position {
        epoch: ledger_sku.applied.epoch,
        seq: -1,
    };
    let events = gate.events(&sku, first_position, None, 100).await.unwrap();
    assert_eq!(events.len(), 4, "the creation and three admissions");
    let batch = BTreeMap::from([(sku.clone(), events)]);
    let first = app.app.ledger.apply(&batch).await.unwrap();
    let again = app.app.ledger.apply(&batch).await.unwrap();
    assert_eq!(
        (again.applied, again.skipped),
        (0, first.applied + first.skipped)
    );
    assert_eq!(app.ledger_counts("drop").await, (10, 3, 0));
    let pool = app.pg().await;
    let admits: i64 = sqlx::query_scalar("SELECT count(*) FROM movements WHERE kind = 'admit'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(admits, 3);
    pool.close().await;
    app.stop().await;
}
