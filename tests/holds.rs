//! The hold lifecycle: confirm, release, extend, expiry, and their races.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    TestApp, assert_problem, body, expires_at_ms, spawn_app, spawn_app_with, test_config,
};
use dropgate::reaper::{self, Reaper};
use dropgate::telemetry::metric;
use futures::future::join_all;
use serde_json::{Value, json};
use std::time::Duration;

async fn admit_one(app: &TestApp, sku: &str, key: &str) -> String {
    let response = app.admit(sku, key, &format!("c-{key}"), 1).await;
    assert_eq!(response.status(), 201);
    body(response).await["hold_id"].as_str().unwrap().to_owned()
}

/// Admits one unit for customer `c-<key>`; the 201 body.
async fn admit(app: &TestApp, sku: &str, key: &str) -> Value {
    let response = app.admit(sku, key, &format!("c-{key}"), 1).await;
    assert_eq!(response.status(), 201);
    body(response).await
}

async fn action(app: &TestApp, hold: &str, what: &str) -> (u16, Value) {
    let response = app.hold_action(hold, what).await;
    (response.status().as_u16(), body(response).await)
}

#[tokio::test]
async fn confirm_is_durable_idempotent_and_final() {
    let app = spawn_app().await;
    app.create_sku("drop", json!({"on_hand": 5})).await;
    let hold = admit_one(&app, "drop", "k").await;

    let (status, confirmed) = action(&app, &hold, "confirm").await;
    assert_eq!(status, 200);
    assert_eq!(
        (confirmed["state"].as_str(), confirmed["durable"].as_bool()),
        (Some("confirmed"), Some(true))
    );
    // Durable means the ledger has it now, not eventually.
    assert_eq!(
        app.count("SELECT count(*) FROM holds WHERE state = 'confirmed'")
            .await,
        1
    );
    assert_eq!(app.ledger_counts("drop").await, (5, 0, 1));

    let (status, again) = action(&app, &hold, "confirm").await;
    assert_eq!((status, again["state"].as_str()), (200, Some("confirmed")));
    assert_problem(
        app.hold_action(&hold, "release").await,
        409,
        "hold_confirmed",
    )
    .await;
    assert_problem(
        app.hold_action(&hold, "extend").await,
        409,
        "hold_confirmed",
    )
    .await;

    let shown = body(app.get(&format!("/v1/holds/{hold}")).await).await;
    assert_eq!(
        (shown["state"].as_str(), shown["durable"].as_bool()),
        (Some("confirmed"), Some(true))
    );
    let sku = app.sku("drop").await;
    assert_eq!(
        (
            sku["sold"].as_i64(),
            sku["held"].as_i64(),
            sku["available"].as_i64()
        ),
        (Some(1), Some(0), Some(4))
    );
    assert_eq!(
        app.count("SELECT count(*) FROM movements WHERE kind = 'confirm'")
            .await,
        1
    );
    app.stop().await;
}

#[tokio::test]
async fn release_returns_units_at_once_and_is_idempotent() {
    let app = spawn_app().await;
    app.create_sku("drop", json!({"on_hand": 1})).await;
    let hold = admit_one(&app, "drop", "k").await;
    assert_eq!(app.sku("drop").await["available"], 0);

    let (status, released) = action(&app, &hold, "release").await;
    assert_eq!(
        (status, released["state"].as_str()),
        (200, Some("released"))
    );
    assert_eq!(app.sku("drop").await["available"], 1);
    let (status, _) = action(&app, &hold, "release").await;
    assert_eq!(status, 200);
    assert_eq!(
        app.sku("drop").await["available"],
        1,
        "a second release adds nothing"
    );

    assert_problem(
        app.hold_action(&hold, "confirm").await,
        409,
        "hold_released",
    )
    .await;
    assert_problem(app.hold_action(&hold, "extend").await, 409, "hold_released").await;
    app.wait_for_ledger("drop").await;
    assert_eq!(app.ledger_counts("drop").await, (1, 0, 0));
    assert_eq!(
        app.count("SELECT count(*) FROM movements WHERE kind = 'release'")
            .await,
        1
    );
    // The freed unit can be held again.
    admit_one(&app, "drop", "k2").await;
    app.stop().await;
}

#[tokio::test]
async fn extend_moves_expiry_at_most_max_extensions_times() {
    let app = spawn_app().await;
    app.create_sku(
        "drop",
        json!({"on_hand": 1, "hold_ttl_ms": 60000, "max_extensions": 1}),
    )
    .await;
    let response = app.admit("drop", "k", "c", 1).await;
    let first = body(response).await;
    let hold = first["hold_id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;

    let (status, extended) = action(&app, hold, "extend").await;
    assert_eq!(status, 200);
    assert!(
        expires_at_ms(&extended) > expires_at_ms(&first),
        "{extended} {first}"
    );
    assert_eq!(extended["extensions"], 1);
    assert_problem(
        app.hold_action(hold, "extend").await,
        409,
        "extension_limit",
    )
    .await;
    app.wait_for_ledger("drop").await;
    assert_eq!(app.count("SELECT extensions::int8 FROM holds").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn abandoned_holds_expire_at_their_expiry_and_return_units_once() {
    // The test is the reaper, at the times it picks.
    let mut config = test_config();
    config.no_reaper = true;
    let app = spawn_app_with(config).await;
    app.create_sku("drop", json!({"on_hand": 3, "hold_ttl_ms": 60000}))
        .await;
    let holds = [
        admit(&app, "drop", "a").await,
        admit(&app, "drop", "b").await,
    ];
    assert_eq!(app.sku("drop").await["available"], 1);

    // Redis's clock decides, so the holds' expiries are placed either side
    // of its now.
    let reaper = Reaper::new(app.app.clone());
    let pass = || app.metrics.scope(reaper.run_once());
    let ids: Vec<&str> = holds
        .iter()
        .map(|h| h["hold_id"].as_str().unwrap())
        .collect();
    let now = app.redis_now_ms().await;
    app.place_expiry("drop", ids[0], now + 60_000).await;
    assert_eq!(pass().await.unwrap(), 0, "not due before expires_at");
    assert_eq!(app.sku("drop").await["available"], 1);
    app.make_due("drop", ids[0]).await;
    assert_eq!(pass().await.unwrap(), 1, "due once expires_at passed");
    app.make_due("drop", ids[1]).await;
    assert_eq!(pass().await.unwrap(), 1);
    assert_eq!(pass().await.unwrap(), 0, "expired once");
    assert_eq!(app.metrics.counter(metric::HOLDS_EXPIRED_TOTAL, &[]), 2);

    let sku = app.sku("drop").await;
    assert_eq!(
        (sku["available"].as_i64(), sku["held"].as_i64()),
        (Some(3), Some(0))
    );
    for hold in &holds {
        let hold = hold["hold_id"].as_str().unwrap();
        let shown = body(app.get(&format!("/v1/holds/{hold}")).await).await;
        assert_eq!(shown["state"], "expired");
        assert_problem(app.hold_action(hold, "confirm").await, 409, "hold_expired").await;
        assert_problem(app.hold_action(hold, "release").await, 409, "hold_expired").await;
    }
    assert_eq!(app.sku("drop").await["available"], 3);
    app.wait_for_ledger("drop").await;
    assert_eq!(app.ledger_counts("drop").await, (3, 0, 0));
    assert_eq!(
        app.count("SELECT count(*) FROM movements WHERE kind = 'expire'")
            .await,
        2
    );
    assert_eq!(
        app.count("SELECT count(*) FROM holds WHERE state = 'expired'")
            .await,
        2
    );
    app.stop().await;
}

#[tokio::test]
async fn the_background_reaper_expires_due_holds_every_interval() {
    let mut config = test_config();
    config.reaper.interval = Duration::from_millis(10);
    let app = spawn_app_with(config).await;
    app.create_sku("drop", json!({"on_hand": 3, "hold_ttl_ms": 60000}))
        .await;
    let holds = [
        admit_one(&app, "drop", "a").await,
        admit_one(&app, "drop", "b").await,
    ];
    for hold in &holds {
        app.make_due("drop", hold).await;
    }
    for _ in 0..200 {
        if app.sku("drop").await["held"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sku = app.sku("drop").await;
    assert_eq!(
        (sku["available"].as_i64(), sku["held"].as_i64()),
        (Some(3), Some(0))
    );
    for hold in &holds {
        let shown = body(app.get(&format!("/v1/holds/{hold}")).await).await;
        assert_eq!(shown["state"], "expired");
    }
    // Counted in the app's metrics: the service runs in its scope.
    assert_eq!(app.metrics.counter(metric::HOLDS_EXPIRED_TOTAL, &[]), 2);
    app.wait_for_ledger("drop").await;
    assert_eq!(app.ledger_counts("drop").await, (3, 0, 0));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirm_release_and_expiry_race_with_exactly_one_winner_per_hold() {
    // Only the test's reaper expires, in small batches so its calls
    // interleave with the requests.
    let mut config = test_config();
    config.no_reaper = true;
    let app = spawn_app_with(config).await;
    let n = 200;
    app.create_sku("drop", json!({"on_hand": n, "hold_ttl_ms": 60000}))
        .await;
    let holds = join_all((0..n).map(|i| {
        let app = &app;
        async move { admit(app, "drop", &format!("k{i}")).await }
    }))
    .await;
    // Half the holds are due by Redis's clock, half are not. A due hold is
    // expired exactly once, by whoever touches it first (reaper, confirm or
    // release); a live one is confirmed or released, never both.
    let due = n / 2;
    for hold in &holds[..due as usize] {
        app.make_due("drop", hold["hold_id"].as_str().unwrap())
            .await;
    }
    let reaper = Reaper::with_config(
        app.app.clone(),
        reaper::Config {
            batch_max_holds: 10,
            ..Default::default()
        },
    );

    // Fire confirm and release for every hold while the reaper expires the
    // due ones.
    let requests = join_all(holds.iter().map(|hold| async {
        let hold = hold["hold_id"].as_str().unwrap();
        let (confirm, release) =
            tokio::join!(action(&app, hold, "confirm"), action(&app, hold, "release"));
        (confirm, release)
    }));
    let (outcomes, reaped) = tokio::join!(requests, reaper.run_once());
    let reaped = reaped.unwrap();

    let (mut confirmed, mut released, mut expired) = (0, 0, 0);
    for (i, ((c_status, c), (r_status, r))) in outcomes.iter().enumerate() {
        assert_eq!(
            (*c_status, *r_status) == (409, 409),
            i < due as usize,
            "expired exactly when due: {c} {r}"
        );
        match (c_status, r_status) {
            (200, 409) => {
                assert_eq!(r["code"], "hold_confirmed");
                confirmed += 1;
            }
            (409, 200) => {
                assert_eq!(c["code"], "hold_released");
                released += 1;
            }
            (409, 409) => {
                assert_eq!(
                    (c["code"].as_str(), r["code"].as_str()),
                    (Some("hold_expired"), Some("hold_expired"))
                );
                expired += 1;
            }
            other => panic!("two winners or an error: {other:?} {c} {r}"),
        }
    }
    assert_eq!((confirmed + released, expired), (n - due, due));
    assert!(reaped <= due as u64, "the reaper expired {reaped} of {due}");

    let sku = app.sku("drop").await;
    assert_eq!(sku["sold"], confirmed);
    assert_eq!(sku["held"], 0);
    assert_eq!(
        sku["available"],
        n - confirmed,
        "every unit not sold came back exactly once"
    );

    app.wait_for_ledger("drop").await;
    assert_eq!(app.ledger_counts("drop").await, (n, 0, confirmed));
    let settled = app
        .count("SELECT count(*) FROM movements WHERE kind IN ('confirm','release','expire')")
        .await;
    assert_eq!(settled, n, "one settling movement per hold");
    assert_eq!(
        app.count("SELECT count(*) FROM movements WHERE kind = 'expire'")
            .await,
        expired
    );
    app.stop().await;
}

#[tokio::test]
async fn holds_become_durable_once_the_worker_commits_them() {
    let app = spawn_app().await;
    app.create_sku("drop", json!({"on_hand": 2})).await;
    let hold = admit_one(&app, "drop", "k").await;
    app.wait_for_ledger("drop").await;
    let shown = body(app.get(&format!("/v1/holds/{hold}")).await).await;
    assert_eq!(
        (shown["state"].as_str(), shown["durable"].as_bool()),
        (Some("held"), Some(true))
    );
    assert_eq!(app.ledger_counts("drop").await, (2, 1, 0));
    app.stop().await;
}

#[tokio::test]
async fn unknown_holds_are_not_found() {
    let app = spawn_app().await;
    app.create_sku("drop", json!({"on_hand": 2})).await;
    let hold = admit_one(&app, "drop", "k").await;
    // Same SKU number and shape, another hold.
    let other = format!("{}{}", &hold[..24], "ffff00000001");
    for what in ["confirm", "release", "extend"] {
        assert_problem(app.hold_action(&other, what).await, 404, "not_found").await;
    }
    assert_problem(
        app.get(&format!("/v1/holds/{other}")).await,
        404,
        "not_found",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn an_unreachable_redis_answers_503_not_a_hang() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = test_config();
    config.stores.redis_url = format!("redis://127.0.0.1:{port}/0");
    config.stores.store_timeout_ms = 500;
    let app = spawn_app_with(config).await;
    let bounded = Duration::from_secs(10);

    let admit = tokio::time::timeout(bounded, app.admit("drop", "k", "c", 1))
        .await
        .expect("no hang");
    assert!(admit.headers().contains_key("retry-after"));
    let problem = assert_problem(admit, 503, "unavailable").await;
    assert_eq!(problem["detail"], "redis is unavailable");
    let put = tokio::time::timeout(bounded, app.put_sku("drop", json!({"on_hand": 1})))
        .await
        .expect("no hang");
    assert_problem(put, 503, "unavailable").await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(body(ready).await["redis"], "unreachable");
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.stop().await;
}
