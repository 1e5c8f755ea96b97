//! The edge of the process: what a hostile or careless client can send
//! before any store is asked. Text that would reach Postgres, request heads
//! over the limits, forged request ids, made-up SKUs claiming metric labels,
//! slow or idle connections, and more requests than the process can carry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_problem, body, spawn_app, TestApp, ADMIN};
use serde_json::json;

const SKU: &str = "drop";

async fn movements(app: &TestApp) -> i64 {
    let pool = app.pg().await;
    let n = sqlx::query_scalar("SELECT count(*) FROM movements")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

async fn adjust(app: &TestApp, reason: &str) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/v1/skus/{SKU}/adjustments")))
        .bearer_auth(ADMIN)
        .json(&json!({"delta": 1, "reason": reason}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn reasons_with_control_characters_or_over_500_characters_change_nothing() {
    let app = spawn_app().await;
    app.create_sku(SKU, json!({"on_hand": 10})).await;
    app.wait_for_ledger(SKU).await;
    let gate_before = app.sku(SKU).await;
    let ledger_before = app.ledger_counts(SKU).await;
    let movements_before = movements(&app).await;
    assert_eq!(movements_before, 1, "the creation");

    let refused = [
        "\u{0}".to_owned(),
        "damaged\u{0}in transit".to_owned(),
        "two\nlines".to_owned(),
        "tab\there".to_owned(),
        "bell\u{7}".to_owned(),
        "delete\u{7f}".to_owned(),
        "next line\u{85}".to_owned(),
        "r".repeat(501),
        "é".repeat(501),
    ];
    for reason in &refused {
        let problem = assert_problem(adjust(&app, reason).await, 422, "validation").await;
        assert_eq!(problem["errors"][0]["field"], "reason", "{reason:?}");
    }

    // The worker had time to write anything that got through.
    app.wait_for_ledger(SKU).await;
    assert_eq!(app.sku(SKU).await, gate_before);
    assert_eq!(app.ledger_counts(SKU).await, ledger_before);
    assert_eq!(movements(&app).await, movements_before);

    // 500 characters (not bytes) of printable text are fine.
    let longest = "é".repeat(500);
    let response = adjust(&app, &longest).await;
    assert_eq!(response.status(), 201);
    assert_eq!(body(response).await["on_hand"], 11);
    app.wait_for_ledger(SKU).await;
    assert_eq!(app.ledger_counts(SKU).await, (11, 0, 0));
    assert_eq!(movements(&app).await, movements_before + 1);
    app.stop().await;
}
