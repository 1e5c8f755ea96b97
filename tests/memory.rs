//! Redis memory per live hold: the hold, its idempotency record, its
//! customer's counter and its expiry entry, by `MEMORY USAGE`. Prints the
//! figure (`cargo test --test memory -- --nocapture`); fails if it grows
//! past today's encoding. Issue 12 aims at 300 bytes (README, Performance).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{spawn_app_with, test_config};
use futures::future::join_all;
use serde_json::json;

const HOLDS: usize = 1000;

async fn memory_usage(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(key)
        .arg("SAMPLES")
        .arg(0)
        .query_async(conn)
        .await
        .expect("MEMORY USAGE")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_per_live_hold() {
    let mut config = test_config();
    (config.no_worker, config.no_reaper, config.no_reconciler) = (true, true, true);
    let app = spawn_app_with(config).await;
    app.create_sku("mem", json!({"on_hand": HOLDS})).await;
    let holds: Vec<String> = join_all((0..HOLDS).map(|i| {
        let app = &app;
        async move {
            let response = app
                .admit("mem", &format!("order-{i:06}"), &format!("c-{i:06}"), 1)
                .await;
            assert_eq!(response.status(), 201);
            common::body(response).await["hold_id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    }))
    .await;

    let mut conn = app.redis().await;
    let (mut hold, mut record, mut customer) = (0, 0, 0);
    for (i, id) in holds.iter().enumerate() {
        hold += memory_usage(&mut conn, &app.key("mem", &format!("h:{id}"))).await;
        record += memory_usage(&mut conn, &app.key("mem", &format!("i:order-{i:06}"))).await;
        customer += memory_usage(&mut conn, &app.key("mem", &format!("c:c-{i:06}"))).await;
    }
    let expiry = memory_usage(&mut conn, &app.key("mem", "expiry")).await;
    let per = |total: u64| total as f64 / HOLDS as f64;
    let total = per(hold + record + customer + expiry);
    println!(
        "bytes per live hold: {total:.0} (hold {:.0}, idempotency record {:.0}, customer counter {:.0}, expiry entry {:.0})",
        per(hold),
        per(record),
        per(customer),
        per(expiry)
    );
    assert!(total <= 650.0, "{total:.0} bytes per live hold");
    app.stop().await;
}
