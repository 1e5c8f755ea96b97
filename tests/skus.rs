//! SKU administration: create, update, adjust, list, and the oversell guard.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ADMIN, TestApp, assert_problem, body, spawn_app};
use serde_json::{Value, json};

async fn adjust(app: &TestApp, sku: &str, delta: i64, reason: &str) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/v1/skus/{sku}/adjustments")))
        .bearer_auth(ADMIN)
        .json(&json!({"delta": delta, "reason": reason}))
        .send()
        .await
        .unwrap()
}

async fn reasons(app: &TestApp) -> Vec<(String, i64, Option<String>)> {
    let pool = app.pg().await;
    let rows =
        sqlx::query_as("SELECT kind, quantity_delta, reason FROM movements ORDER BY epoch, seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    rows
}

#[tokio::test]
async fn put_creates_then_updates_with_defaults() {
    let app = spawn_app().await;
    let created = app.put_sku("drop-1", json!({"on_hand": 100})).await;
    assert_eq!(created.status(), 201);
    let expected = json!({"sku": "drop-1", "on_hand": 100, "available": 100, "held": 0, "sold": 0,
        "per_customer_limit": 0, "hold_ttl_ms": 600000, "max_extensions": 1});
    assert_eq!(body(created).await, expected);

    let updated = app
        .put_sku("drop-1", json!({"on_hand": 120, "per_customer_limit": 2, "hold_ttl_ms": 1000, "max_extensions": 3}))
        .await;
    assert_eq!(updated.status(), 200);
    let updated: Value = body(updated).await;
    assert_eq!(
        (updated["on_hand"].as_i64(), updated["available"].as_i64()),
        (Some(120), Some(120))
    );
    assert_eq!(app.sku("drop-1").await, updated);

    assert_eq!(app.ledger_counts("drop-1").await, (120, 0, 0));
    let movements = reasons(&app).await;
    assert_eq!(movements.len(), 2);
    assert_eq!(
        (movements[0].0.as_str(), movements[0].1),
        ("adjustment", 100)
    );
    assert_eq!(
        (movements[1].0.as_str(), movements[1].1),
        ("adjustment", 20)
    );
    app.stop().await;
}

#[tokio::test]
async fn adjustments_are_recorded_with_their_reason() {
    let app = spawn_app().await;
    app.create_sku("drop", json!({"on_hand": 10})).await;
    let response = adjust(&app, "drop", -3, "damaged in warehouse").await;
    assert_eq!(response.status(), 201);
    assert_eq!(body(response).await["on_hand"], 7);
    assert_eq!(adjust(&app, "drop", 5, "found a box").await.status(), 201);
    assert_eq!(app.sku("drop").await["available"], 12);
    assert_eq!(app.ledger_counts("drop").await, (12, 0, 0));
    let movements = reasons(&app).await;
    assert_eq!(
        movements[1],
        ("adjustment".into(), -3, Some("damaged in warehouse".into()))
    );
    assert_eq!(
        movements[2],
        ("adjustment".into(), 5, Some("found a box".into()))
    );
    app.stop().await;
}

#[tokio::test]
async fn stock_cannot_go_below_held_plus_sold() {
    let app = spawn_app().await;
    app.create_sku("drop", json!({"on_hand": 5})).await;
    for i in 0..3 {
        assert_eq!(
            app.admit("drop", &format!("k{i}"), &format!("c{i}"), 1)
                .await
                .status(),
            201
        );
    }
    let hold = body(app.admit("drop", "k9", "c9", 1).await).await;
    app.hold_action(hold["hold_id"].as_str().unwrap(), "confirm")
        .await;

    let problem = assert_problem(
        app.put_sku("drop", json!({"on_hand": 3})).await,
        409,
        "conflict",
    )
    .await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("held 3 + sold 1"),
        "{problem}"
    );
    assert_problem(adjust(&app, "drop", -2, "shrinkage").await, 409, "conflict").await;

    // Nothing changed, in the gate or the ledger.
    let sku = app.sku("drop").await;
    assert_eq!(
        (sku["on_hand"].as_i64(), sku["available"].as_i64()),
        (Some(5), Some(1))
    );
    app.wait_for_ledger("drop").await;
    assert_eq!(app.ledger_counts("drop").await, (5, 3, 1));
    assert_eq!(
        reasons(&app)
            .await
            .iter()
            .filter(|m| m.0 == "adjustment")
            .count(),
        1
    );

    // Exactly held + sold is allowed.
    assert_eq!(
        app.put_sku("drop", json!({"on_hand": 4})).await.status(),
        200
    );
    assert_eq!(app.sku("drop").await["available"], 0);
    app.stop().await;
}

#[tokio::test]
async fn skus_are_listed_in_pages() {
    let app = spawn_app().await;
    for sku in ["c", "a", "e", "b", "d"] {
        app.create_sku(sku, json!({"on_hand": 1})).await;
    }
    let page = |query: &'static str| {
        let app = &app;
        async move {
            let response = app
                .client
                .get(app.url(&format!("/v1/skus{query}")))
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            body(response).await
        }
    };
    let first = page("?limit=2").await;
    let ids = |page: &Value| {
        page["skus"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["sku"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&first), ["a", "b"]);
    assert_eq!(first["next_after"], "b");
    let second = page("?limit=2&after=b").await;
    assert_eq!(ids(&second), ["c", "d"]);
    let last = page("?limit=2&after=d").await;
    assert_eq!(ids(&last), ["e"]);
    assert!(last.get("next_after").is_none());
    assert_eq!(ids(&page("").await).len(), 5);
    app.stop().await;
}
