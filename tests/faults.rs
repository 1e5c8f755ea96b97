//! Faults with real processes: Redis losing its data, workers and servers
//! killed mid-flight, Postgres cut off, events delivered twice, drift
//! injected behind dropgate's back, races across processes. Every test
//! asserts exact numbers and ends with a passing audit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::{Dropgate, PgProxy, RedisServer, start_redis, start_replica_of};
use common::{STOREFRONT, TestApp, assert_problem, body, spawn_app_with, test_config};
use dropgate::domain::{HoldId, HoldIdKey, Position, Quantity, SkuId};
use dropgate::gate::CONSUMER_GROUP;
use dropgate::reaper::{self, Reaper};
use dropgate::worker::Worker;
use futures::future::join_all;
use redis::AsyncCommands;
use redis::streams::StreamPendingReply;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

fn sku(name: &str) -> SkuId {
    SkuId::parse(name).unwrap()
}

/// Admits one unit for customer `key`; the 201 body.
async fn admit_hold(app: &TestApp, sku: &str, key: &str) -> serde_json::Value {
    let response = app.admit(sku, key, key, 1).await;
    assert_eq!(response.status(), 201, "{key}");
    body(response).await
}

async fn admit_ok(app: &TestApp, sku: &str, key: &str) -> String {
    admit_hold(app, sku, key).await["hold_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn assert_audit_passes(app: &TestApp) {
    let report = dropgate::audit::audit(&app.app).await.expect("audit runs");
    assert!(report.ok(), "{}", report.table());
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..400 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Ids shaped exactly like `issued` (same serial block, SKU and quantity)
/// that this ledger never issued: one signed with another key, and
/// `issued` with one bit of its tag flipped.
fn forgeries(issued: &str) -> Vec<String> {
    let id = HoldId::parse(issued).unwrap();
    let quantity = Quantity::parse(id.quantity()).unwrap();
    let other_key = HoldIdKey::new(b"another ledger's key");
    vec![
        HoldId::issue(&other_key, id.serial() + 1, id.sku_no(), quantity).to_string(),
        uuid::Uuid::from_u128(id.uuid().as_u128() ^ 1).to_string(),
    ]
}

/// Every hold endpoint answers 404 for each of `ids`.
async fn assert_never_issued(app: &TestApp, ids: &[String]) {
    for id in ids {
        assert_problem(app.get(&format!("/v1/holds/{id}")).await, 404, "not_found").await;
        for action in ["confirm", "release", "extend"] {
            assert_problem(app.hold_action(id, action).await, 404, "not_found").await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_is_rebuilt_from_the_ledger_without_overselling() {
    let mut redis = start_redis().await;
    let mut config = test_config();
    config.stores.redis_url = redis.url();
    // Only explicit flushes reach the ledger, so the window of loss is exact.
    (config.no_worker, config.no_reconciler) = (true, true);
    let app = spawn_app_with(config).await;
    app.create_sku("drop", json!({"on_hand": 50})).await;

    let mut durable = Vec::new();
    for i in 0..20 {
        durable.push(admit_ok(&app, "drop", &format!("a{i}")).await);
    }
    for hold in &durable[..10] {
        assert_eq!(app.hold_action(hold, "confirm").await.status(), 200);
    }
    // Lost holds of one and of two units: their ids say which.
    let mut lost = Vec::new();
    for i in 0..10 {
        let quantity = 1 + i % 2;
        let response = app.admit("drop", &format!("b{i}"), "b", quantity).await;
        assert_eq!(response.status(), 201);
        let hold = body(response).await["hold_id"].as_str().unwrap().to_owned();
        lost.push((hold, quantity));
    }
    let forged = forgeries(&lost[0].0);
    assert_never_issued(&app, &forged).await;

    redis.kill();
    redis.restart().await.expect("redis-server restarts");
    assert_problem(
        app.admit("drop", "during", "during", 1).await,
        503,
        "unavailable",
    )
    .await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(body(ready).await["gate"], "not built");

    dropgate::rebuild::ensure_gate(&app.app)
        .await
        .expect("rebuild");
    assert_eq!(
        app.client
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let sku_now = app.sku("drop").await;
    assert_eq!(
        (
            sku_now["on_hand"].as_i64(),
            sku_now["sold"].as_i64(),
            sku_now["held"].as_i64(),
            sku_now["available"].as_i64()
        ),
        (Some(50), Some(10), Some(10), Some(30))
    );
    for hold in &durable[..10] {
        let shown = body(app.get(&format!("/v1/holds/{hold}")).await).await;
        assert_eq!(
            (shown["state"].as_str(), shown["durable"].as_bool()),
            (Some("confirmed"), Some(true))
        );
    }
    for hold in &durable[10..12] {
        assert_eq!(
            app.hold_action(hold, "confirm").await.status(),
            200,
            "live holds survive the rebuild"
        );
    }
    for (hold, quantity) in &lost {
        let shown = body(app.get(&format!("/v1/holds/{hold}")).await).await;
        assert_eq!(
            (
                shown["state"].as_str(),
                shown["quantity"].as_i64(),
                shown["sku"].as_str(),
                shown["durable"].as_bool()
            ),
            (Some("lost"), Some(*quantity), Some("drop"), Some(false)),
            "{shown}"
        );
        // No store kept the customer, and none is made up.
        assert!(shown.get("customer_id").is_none(), "{shown}");
        assert_problem(app.hold_action(hold, "confirm").await, 409, "hold_lost").await;
    }
    assert_never_issued(&app, &forged).await;
    // Idempotency records of durable holds were rebuilt too.
    let replay = app.admit("drop", "a15", "a15", 1).await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(body(replay).await["hold_id"], durable[15].as_str());

    let answers = join_all((0..40).map(|i| {
        let app = &app;
        async move {
            app.admit("drop", &format!("n{i}"), &format!("n{i}"), 1)
                .await
                .status()
                .as_u16()
        }
    }))
    .await;
    assert_eq!(
        answers.iter().filter(|s| **s == 201).count(),
        30,
        "no unit admitted twice"
    );
    assert_eq!(answers.iter().filter(|s| **s == 409).count(), 10);
    assert_audit_passes(&app).await;
    assert_eq!(app.ledger_counts("drop").await, (50, 38, 12));
    app.stop().await;
}

#[tokio::test]
async fn injected_drift_is_found_repaired_and_audited() {
    let mut config = test_config();
    config.no_reconciler = true;
    let app = spawn_app_with(config).await;
    app.create_sku("drop", json!({"on_hand": 20})).await;
    for i in 0..4 {
        admit_ok(&app, "drop", &format!("k{i}")).await;
    }
    app.tamper_stock("drop", "HINCRBY", "held", 5).await;
    assert_eq!(app.sku("drop").await["available"], 11);

    let reconciler = dropgate::reconciler::Reconciler::new(app.app.clone());
    let report = reconciler.run_once().await.unwrap();
    assert_eq!(report.drift.len(), 1);
    let drift = &report.drift[0];
    assert_eq!(
        (drift.on_hand, drift.held, drift.sold, drift.repaired),
        (0, 5, 0, true)
    );
    assert_eq!(app.sku("drop").await["available"], 16);
    assert_eq!(app.count("SELECT count(*) FROM movements WHERE kind = 'reconcile' AND reason LIKE 'gate had on_hand 20 held 9%'").await, 1);
    assert!(
        reconciler.run_once().await.unwrap().drift.is_empty(),
        "repaired once, stays repaired"
    );
    assert_audit_passes(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn events_delivered_twice_change_nothing() {
    // No background worker: it would acknowledge and trim the events this
    // test replays (confirm and release write the ledger themselves).
    let mut config = test_config();
    config.no_worker = true;
    let app = spawn_app_with(config).await;
    app.create_sku("drop", json!({"on_hand": 10})).await;
    let holds: Vec<String> = join_all((0..6).map(|i| {
        let app = &app;
        async move { admit_ok(app, "drop", &format!("k{i}")).await }
    }))
    .await;
    app.hold_action(&holds[0], "confirm").await;
    app.hold_action(&holds[1], "release").await;
    app.wait_for_ledger("drop").await;
    let before = app.ledger_counts("drop").await;
    assert_eq!(before, (10, 4, 1));

    // Replay the whole stream range into the ledger.
    let events = app
        .app
        .gate
        .events(&sku("drop"), Position { epoch: 0, seq: -1 }, None, 1000)
        .await
        .unwrap();
    let n = events.len() as u64;
    assert_eq!(n, 9, "adjust + 6 admits + confirm + release");
    let report = app
        .app
        .ledger
        .apply(&BTreeMap::from([(sku("drop"), events.clone())]))
        .await
        .unwrap();
    assert_eq!((report.applied, report.skipped), (0, n));

    // The same admit appended again at a new position is skipped by its id.
    let admit = events
        .iter()
        .find(|e| matches!(e.change, dropgate::domain::Change::Admit { .. }))
        .unwrap();
    let mut redis = app.redis().await;
    let entries: Vec<(String, Vec<(String, String)>)> = {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(app.key("drop", "events"))
            .arg(admit.position.stream_id())
            .arg(admit.position.stream_id())
            .query_async(&mut redis)
            .await
            .unwrap();
        reply
            .ids
            .iter()
            .map(|e| {
                (
                    e.id.clone(),
                    e.map
                        .iter()
                        .map(|(k, v)| {
                            (k.clone(), redis::from_redis_value_ref::<String>(v).unwrap())
                        })
                        .collect(),
                )
            })
            .collect()
    };
    let mut xadd = redis::cmd("XADD");
    xadd.arg(app.key("drop", "events"))
        .arg(format!("{}-*", admit.position.epoch));
    for (field, value) in &entries[0].1 {
        xadd.arg(field).arg(value);
    }
    let _: String = xadd.query_async(&mut redis).await.unwrap();
    // No hint names it: the worker's sweep finds it.
    let mut worker = Worker::new(app.app.clone(), Default::default()).unwrap();
    for _ in 0..20 {
        if app.ledger_caught_up("drop").await {
            break;
        }
        let report = worker.run_once().await.unwrap();
        assert_eq!(report.applied, 0);
    }
    assert!(app.ledger_caught_up("drop").await);
    assert_eq!(app.ledger_counts("drop").await, before);
    assert_eq!(app.count("SELECT count(*) FROM movements").await, 9);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_batch_loses_nothing_and_applies_nothing_twice() {
    let mut config = test_config();
    (config.no_worker, config.no_reconciler) = (true, true);
    let app = spawn_app_with(config).await;
    app.create_sku("drop", json!({"on_hand": 5000})).await;
    let statuses = join_all((0..1500).map(|i| {
        let app = &app;
        async move {
            app.admit("drop", &format!("k{i}"), &format!("c{i}"), 1)
                .await
                .status()
                .as_u16()
        }
    }))
    .await;
    assert!(statuses.iter().all(|s| *s == 201));
    let stream = app.key("drop", "events");
    let mut redis = app.redis().await;
    let in_stream: usize = redis.xlen(&stream).await.unwrap();

    // The test holds the SKU's row, so the worker's commit waits for it:
    // the worker reads its batch and is stopped inside the commit.
    let pool = app.pg().await;
    let mut row_lock = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM skus WHERE sku = 'drop' FOR UPDATE")
        .execute(&mut *row_lock)
        .await
        .unwrap();
    let worker = Dropgate::spawn(&["worker"], &app.child_env(None), None);
    wait_for(
        "the worker to read the batch and wait in its commit",
        async || {
            let committing: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            pending(&mut redis, &stream).await.0 == in_stream && committing > 0
        },
    )
    .await;
    let admits = "SELECT count(*) FROM movements WHERE kind = 'admit'";
    assert_eq!(app.count(admits).await, 0, "nothing of the batch applied");

    worker.kill();
    row_lock.rollback().await.unwrap();
    let (left, consumers) = pending(&mut redis, &stream).await;
    assert_eq!(
        (left, consumers),
        (in_stream, 1),
        "the whole batch is still pending, for the dead worker"
    );
    assert_eq!(
        app.count(admits).await,
        0,
        "the dead worker's commit never happened"
    );

    // Another worker claims what the dead one left and applies it once.
    let mut second = Worker::new(
        app.app.clone(),
        dropgate::worker::Config {
            claim_idle_ms: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let report = second.run_once().await.unwrap();
    assert_eq!(
        (report.applied, report.skipped, report.lost.len()),
        (1500, 0, 0)
    );
    assert_eq!(pending(&mut redis, &stream).await, (0, 0));
    let again = second.run_once().await.unwrap();
    assert_eq!((again.applied, again.skipped), (0, 0));
    assert_eq!(app.count(admits).await, 1500);
    assert_eq!(app.count("SELECT count(*) FROM holds").await, 1500);
    assert_eq!(app.ledger_counts("drop").await, (5000, 1500, 0));
    pool.close().await;
    assert_audit_passes(&app).await;
    app.stop().await;
}

/// Events of `stream` delivered to the ledger's consumer group but not yet
/// acknowledged, and how many consumers hold them.
async fn pending(redis: &mut redis::aio::MultiplexedConnection, stream: &str) -> (usize, usize) {
    let reply: StreamPendingReply = redis.xpending(stream, CONSUMER_GROUP).await.unwrap();
    match reply {
        StreamPendingReply::Data(data) => (data.count, data.consumers.len()),
        _ => (0, 0),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_killed_mid_drop_keeps_every_hold_it_answered() {
    let mut config = test_config();
    (config.no_worker, config.no_reconciler, config.no_reaper) = (true, true, true);
    let app = spawn_app_with(config).await;
    app.create_sku("drop", json!({"on_hand": 3000})).await;
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], common::process::free_port()));
    let server = Dropgate::spawn(&["serve"], &app.child_env(Some(listen)), Some(listen));

    let url = format!("http://{listen}/v1/skus/drop/holds");
    let held = Arc::new(AtomicU64::new(0));
    let drive = tokio::spawn({
        let (client, held) = (app.client.clone(), held.clone());
        async move {
            let requests = (0..2000).map(|i| {
                let (client, url, held) = (client.clone(), url.clone(), held.clone());
                async move {
                    tokio::time::sleep(Duration::from_micros(i * 300)).await;
                    let response = client
                        .post(url)
                        .bearer_auth(STOREFRONT)
                        .header("Idempotency-Key", format!("k{i}"))
                        .json(&json!({"customer_id": format!("c{i}"), "quantity": 1}))
                        .send()
                        .await
                        .ok()?;
                    (response.status() == 201).then_some(())?;
                    let hold = response.json::<serde_json::Value>().await.ok()?["hold_id"]
                        .as_str()?
                        .to_owned();
                    held.fetch_add(1, Ordering::Relaxed);
                    Some(hold)
                }
            });
            join_all(requests)
                .await
                .into_iter()
                .flatten()
                .collect::<Vec<String>>()
        }
    });
    // Killed once it has answered a hundred holds, with more on the way.
    wait_for("the server to answer holds", async || {
        held.load(Ordering::Relaxed) >= 100
    })
    .await;
    server.kill();
    let answered = drive.await.unwrap();
    assert!(
        answered.len() >= 100 && answered.len() < 2000,
        "killed mid-drop: {}",
        answered.len()
    );

    // Another worker claims what the dead server's worker left pending (at
    // once: no idle time to wait out) and reads the rest.
    let mut worker = Worker::new(
        app.app.clone(),
        dropgate::worker::Config {
            claim_idle_ms: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let stream = app.key("drop", "events");
    let mut redis = app.redis().await;
    for _ in 0..20 {
        worker.run_once().await.unwrap();
        if pending(&mut redis, &stream).await == (0, 0) && app.ledger_caught_up("drop").await {
            break;
        }
    }
    assert!(app.ledger_caught_up("drop").await);
    assert_eq!(pending(&mut redis, &stream).await, (0, 0));
    let ids: Vec<uuid::Uuid> = answered
        .iter()
        .map(|h| uuid::Uuid::parse_str(h).unwrap())
        .collect();
    let pool = app.pg().await;
    let in_ledger: i64 =
        sqlx::query_scalar("SELECT count(*) FROM holds WHERE hold_id = ANY($1) AND state = 'held'")
            .bind(&ids)
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert_eq!(in_ledger, ids.len() as i64, "every 201 the client saw");
    for hold in answered.iter().take(20) {
        let shown = body(app.get(&format!("/v1/holds/{hold}")).await).await;
        assert_eq!(
            (shown["state"].as_str(), shown["durable"].as_bool()),
            (Some("held"), Some(true))
        );
    }
    app.wait_for_ledger("drop").await;
    let gate_held = app.sku("drop").await["held"].as_i64().unwrap();
    assert!(gate_held >= ids.len() as i64, "{gate_held}");
    assert_eq!(app.ledger_counts("drop").await, (3000, gate_held, 0));
    assert_eq!(
        app.count("SELECT count(*) FROM movements WHERE kind = 'admit'")
            .await,
        gate_held,
        "each hold applied once"
    );
    assert_audit_passes(&app).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_goes_on_while_postgres_is_away_and_the_ledger_catches_up() {
    let mut proxy = PgProxy::start().await;
    let mut config = test_config();
    proxy.route(&mut config);
    config.stores.store_timeout_ms = 1000;
    let app = spawn_app_with(config).await;
    app.create_sku("drop", json!({"on_hand": 100})).await;

    proxy.cut().await;
    let holds: Vec<String> = join_all((0..50).map(|i| {
        let app = &app;
        async move { admit_ok(app, "drop", &format!("k{i}")).await }
    }))
    .await;
    let confirm = app.hold_action(&holds[0], "confirm").await;
    assert!(confirm.headers().contains_key("retry-after"));
    let problem = assert_problem(confirm, 503, "unavailable").await;
    assert_eq!(problem["detail"], "postgres is unavailable");
    assert_eq!(
        app.count("SELECT count(*) FROM holds").await,
        0,
        "nothing reached the ledger"
    );

    proxy.restore().await;
    wait_for("the ledger to catch up", async || {
        app.count("SELECT count(*) FROM holds").await == 50
    })
    .await;
    let (status, confirmed) = {
        let response = app.hold_action(&holds[0], "confirm").await;
        (response.status().as_u16(), body(response).await)
    };
    assert_eq!((status, confirmed["durable"].as_bool()), (200, Some(true)));
    assert_eq!(app.ledger_counts("drop").await, (100, 49, 1));
    assert_audit_passes(&app).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirm_release_and_expiry_race_across_processes() {
    // Only the test's reaper expires; this process confirms, the other
    // releases.
    let mut config = test_config();
    config.no_reaper = true;
    let app = spawn_app_with(config).await;
    let n = 150;
    app.create_sku("drop", json!({"on_hand": n, "hold_ttl_ms": 60000}))
        .await;
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], common::process::free_port()));
    let other = Dropgate::spawn(&["serve"], &app.child_env(Some(listen)), Some(listen));

    let admitted: Vec<serde_json::Value> = join_all((0..n).map(|i| {
        let app = &app;
        async move { admit_hold(app, "drop", &format!("k{i}")).await }
    }))
    .await;
    let holds: Vec<&str> = admitted
        .iter()
        .map(|hold| hold["hold_id"].as_str().unwrap())
        .collect();
    // A third of the holds are due by Redis's clock, the one clock of both
    // processes: each is expired exactly once, by whoever touches it first.
    let due = n / 3;
    for hold in &holds[..due as usize] {
        app.make_due("drop", hold).await;
    }
    let reaper = Reaper::with_config(
        app.app.clone(),
        reaper::Config {
            batch_max_holds: 10,
            ..Default::default()
        },
    );
    let requests = join_all(holds.iter().map(|hold| {
        let app = &app;
        async move {
            let release = app
                .client
                .post(format!("http://{listen}/v1/holds/{hold}/release"))
                .bearer_auth(STOREFRONT)
                .send();
            let (confirm, release) = tokio::join!(app.hold_action(hold, "confirm"), release);
            (
                confirm.status().as_u16(),
                release.unwrap().status().as_u16(),
            )
        }
    }));
    let (outcomes, reaped) = tokio::join!(requests, reaper.run_once());
    let confirmed = outcomes.iter().filter(|o| **o == (200, 409)).count() as i64;
    let released = outcomes.iter().filter(|o| **o == (409, 200)).count() as i64;
    let expired = outcomes.iter().filter(|o| **o == (409, 409)).count() as i64;
    assert_eq!(
        (confirmed + released, expired),
        (n - due, due),
        "exactly one winner per hold, expired exactly when due: {outcomes:?}"
    );
    assert!(
        outcomes[..due as usize].iter().all(|o| *o == (409, 409)),
        "{outcomes:?}"
    );
    let reaped = reaped.unwrap();
    assert!(reaped <= due as u64, "the reaper expired {reaped} of {due}");
    let sku_now = app.sku("drop").await;
    assert_eq!(
        (
            sku_now["sold"].as_i64(),
            sku_now["held"].as_i64(),
            sku_now["available"].as_i64()
        ),
        (Some(confirmed), Some(0), Some(n - confirmed))
    );
    app.wait_for_ledger("drop").await;
    assert_eq!(app.ledger_counts("drop").await, (n, 0, confirmed));
    assert_eq!(app.count("SELECT count(*) FROM movements WHERE kind IN ('confirm','release','expire') AND held_delta <> 0").await, n);
    drop(other);
    assert_audit_passes(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn the_ledger_refuses_an_oversell_and_the_hold_is_lost() {
    let mut config = test_config();
    (config.no_worker, config.no_reconciler) = (true, true);
    let app = spawn_app_with(config).await;
    app.create_sku("drop", json!({"on_hand": 2})).await;
    // A gate that believes in stock the ledger does not have.
    app.tamper_stock("drop", "HSET", "on_hand", 3).await;
    let holds = [
        admit_ok(&app, "drop", "a").await,
        admit_ok(&app, "drop", "b").await,
        admit_ok(&app, "drop", "c").await,
    ];

    app.app.flush(&sku("drop"), None).await.unwrap();
    assert_eq!(
        app.ledger_counts("drop").await,
        (2, 2, 0),
        "the ledger never oversells"
    );
    let shown = body(app.get(&format!("/v1/holds/{}", holds[2])).await).await;
    assert_eq!(shown["state"], "lost");
    assert_problem(
        app.hold_action(&holds[2], "confirm").await,
        409,
        "hold_lost",
    )
    .await;
    assert_eq!(
        app.sku("drop").await["held"],
        2,
        "the gate dropped the lost hold"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM movements WHERE kind = 'lost'")
            .await,
        1
    );

    // The reconciler then squares the stock with the ledger, audited.
    let report = dropgate::reconciler::Reconciler::new(app.app.clone())
        .run_once()
        .await
        .unwrap();
    assert_eq!(
        (report.drift[0].on_hand, report.drift[0].repaired),
        (1, true)
    );
    assert_eq!(app.sku("drop").await["available"], 0);
    assert_audit_passes(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn a_settling_event_lost_on_the_way_is_settled_by_the_reconciler() {
    let mut config = test_config();
    (config.no_worker, config.no_reconciler, config.no_reaper) = (true, true, true);
    let app = spawn_app_with(config).await;
    app.create_sku("drop", json!({"on_hand": 5, "hold_ttl_ms": 1000}))
        .await;
    let admitted = admit_hold(&app, "drop", "a").await;
    let hold = admitted["hold_id"].as_str().unwrap();
    app.app.flush(&sku("drop"), None).await.unwrap();
    assert_eq!(app.ledger_counts("drop").await, (5, 1, 0));

    // The reaper expires it once it is due, then its event vanishes before
    // the ledger sees it.
    app.make_due("drop", hold).await;
    let reaped = dropgate::reaper::Reaper::new(app.app.clone())
        .run_once()
        .await
        .unwrap();
    assert_eq!(reaped, 1);
    let mut redis = app.redis().await;
    let () = redis::cmd("XTRIM")
        .arg(app.key("drop", "events"))
        .arg("MAXLEN")
        .arg(0)
        .query_async(&mut redis)
        .await
        .unwrap();

    // The ledger still has the hold as held. Its expiry placed either side
    // of the reconciler's grace: not an orphan yet, then one.
    let reconciler = dropgate::reconciler::Reconciler::new(app.app.clone());
    let grace_ms = dropgate::reconciler::Config::default()
        .orphan_grace
        .as_millis() as f64;
    let pool = app.pg().await;
    let expired_ago = async |ms: f64| {
        sqlx::query(
            "UPDATE holds SET expires_at = now() - make_interval(secs => $2::float8 / 1000)
             WHERE hold_id = $1",
        )
        .bind(uuid::Uuid::parse_str(hold).unwrap())
        .bind(ms)
        .execute(&pool)
        .await
        .unwrap();
    };
    expired_ago(grace_ms - 2000.0).await;
    assert_eq!(reconciler.settle_orphans(&sku("drop")).await.unwrap(), 0);
    assert_eq!(app.ledger_counts("drop").await, (5, 1, 0));
    expired_ago(grace_ms + 1.0).await;
    pool.close().await;
    assert_eq!(reconciler.settle_orphans(&sku("drop")).await.unwrap(), 1);
    assert_eq!(app.ledger_counts("drop").await, (5, 0, 0));
    let shown = body(app.get(&format!("/v1/holds/{hold}")).await).await;
    assert_eq!(shown["state"], "expired");
    assert!(reconciler.run_once().await.unwrap().drift.is_empty());
    assert_audit_passes(&app).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admissions_can_wait_for_a_replica() {
    // A replica syncs at once, not after the default 5 s diskless-sync delay.
    let primary = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"])
        .await
        .expect("redis-server starts");
    let replica = start_replica_of(primary.port()).await;
    let mut config = test_config();
    config.stores.redis_url = primary.url();
    (config.redis_wait_replicas, config.redis_wait_timeout_ms) = (1, 2000);
    let app = spawn_app_with(config).await;
    app.create_sku("drop", json!({"on_hand": 5})).await;
    let hold = admit_ok(&app, "drop", "a").await;

    // Answered only once the replica had it: read it there at once.
    let mut on_replica = redis::Client::open(replica.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let state: Option<String> = redis::cmd("HGET")
        .arg(app.key("drop", &format!("h:{hold}")))
        .arg("s")
        .query_async(&mut on_replica)
        .await
        .unwrap();
    assert_eq!(state.as_deref(), Some("held"));
    app.stop().await;
}

#[tokio::test]
async fn acknowledged_events_are_trimmed_from_the_stream() {
    let app = spawn_app_with(test_config()).await;
    app.create_sku("drop", json!({"on_hand": 100})).await;
    for i in 0..30 {
        admit_ok(&app, "drop", &format!("k{i}")).await;
    }
    let mut redis = app.redis().await;
    wait_for("the worker to acknowledge and trim", async || {
        let length: i64 = redis::cmd("XLEN")
            .arg(app.key("drop", "events"))
            .query_async(&mut redis)
            .await
            .unwrap();
        length == 0
    })
    .await;
    assert_eq!(
        app.count("SELECT count(*) FROM movements WHERE kind = 'admit'")
            .await,
        30
    );
    app.stop().await;
}
