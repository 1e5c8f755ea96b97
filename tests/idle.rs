//! Many idle SKUs: the commit worker, the reaper and the reconciler follow
//! activity hints, so an idle catalogue costs a bounded number of Redis
//! commands per pass, counted here with INFO commandstats on a private
//! redis-server; activity on a few SKUs is committed, expired and
//! reconciled exactly as before; and work whose hint was lost is found by
//! the slow sweep over the catalogue.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::start_redis;
use common::{TestApp, body, spawn_app_with, test_config};
use dropgate::app::Dropgate;
use dropgate::domain::{CustomerId, IdempotencyKey, Quantity, SkuId, SkuSettings};
use dropgate::reaper::{self, Reaper};
use dropgate::reconciler::{self, Drift, Reconciler};
use dropgate::worker::{self, Worker};
use futures::stream::{self, StreamExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// SKUs each service's sweep looks at per pass in these tests.
const SWEEP: usize = 20;

fn sku(name: &str) -> SkuId {
    SkuId::parse(name).unwrap()
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:04}")).collect()
}

/// Creates SKUs through the app's own operation (ledger, then gate), 32 at
/// a time: 10 units, 1 per customer, holds of a minute.
async fn create_skus(app: &Dropgate, names: &[String]) {
    let settings = SkuSettings::parse(10, Some(1), Some(60_000), Some(1)).unwrap();
    stream::iter(names)
        .for_each_concurrent(32, |name| async move {
            let outcome = app.put_sku(&sku(name), settings).await.unwrap();
            assert!(
                matches!(outcome, dropgate::app::SkuOutcome::Created(_)),
                "{outcome:?}"
            );
        })
        .await;
}

/// Calls per command since the last reset (`INFO commandstats`).
async fn command_calls(redis: &mut redis::aio::MultiplexedConnection) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

async fn reset_stats(redis: &mut redis::aio::MultiplexedConnection) {
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(redis)
        .await
        .unwrap();
}

/// The calls of `what` between two readings, excluding the `INFO` and
/// `CONFIG` of the readings themselves.
fn calls(after: &BTreeMap<String, u64>, what: &str) -> u64 {
    match what {
        "total" => after
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "info" | "config|resetstat"))
            .map(|(_, calls)| calls)
            .sum(),
        name => after.get(name).copied().unwrap_or(0),
    }
}

/// Entries left in the streams of `skus`.
async fn backlog(app: &TestApp, skus: &[String]) -> u64 {
    let mut redis = app.redis().await;
    let mut pipe = redis::pipe();
    for name in skus {
        pipe.xlen(app.key(name, "events"));
    }
    let lengths: Vec<u64> = pipe.query_async(&mut redis).await.unwrap();
    lengths.iter().sum()
}

/// Runs worker passes until the streams of `skus` are empty (acknowledged
/// and trimmed); returns the events the passes applied.
async fn drain(worker: &mut Worker, app: &TestApp, skus: &[String]) -> u64 {
    let mut applied = 0;
    for _ in 0..200 {
        applied += worker.run_once().await.unwrap().applied;
        if backlog(app, skus).await == 0 {
            return applied;
        }
    }
    panic!("the worker did not drain the streams");
}

async fn admit(app: &TestApp, sku: &str, customer: &str) -> serde_json::Value {
    let response = app
        .admit(sku, &format!("{sku}-{customer}"), customer, 1)
        .await;
    assert_eq!(response.status(), 201);
    body(response).await
}

fn worker_config() -> worker::Config {
    worker::Config {
        // Passes of an idle worker return soon, so the test runs many.
        read_block_ms: 10,
        sweep_interval: Duration::ZERO,
        sweep_skus: SWEEP,
        ..Default::default()
    }
}

fn reaper_config() -> reaper::Config {
    reaper::Config {
        sweep_skus: SWEEP,
        ..Default::default()
    }
}

fn reconciler_config() -> reconciler::Config {
    reconciler::Config {
        sweep_skus: SWEEP,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_skus_cost_a_bounded_number_of_commands_and_activity_is_handled_as_before() {
    let server = start_redis().await;
    let mut config = test_config();
    config.stores.redis_url = server.url();
    // The test drives every service itself.
    (config.no_worker, config.no_reaper, config.no_reconciler) = (true, true, true);
    let app = spawn_app_with(config).await;
    let catalogue = names("idle", 2000);
    create_skus(&app.app, &catalogue).await;

    let mut worker = Worker::new(app.app.clone(), worker_config()).unwrap();
    let reaper = Reaper::with_config(app.app.clone(), reaper_config());
    let reconciler = Reconciler::with_config(app.app.clone(), reconciler_config());
    // The creations: their events were applied inline, so the worker only
    // acknowledges and trims them; the reconciler checks every SKU they
    // name; nothing is due.
    assert_eq!(drain(&mut worker, &app, &catalogue).await, 0);
    // Hints the drain did not need (the sweep got there first) are read
    // and found empty-handed.
    for _ in 0..3 {
        worker.run_once().await.unwrap();
    }
    let mut checked = 0;
    for _ in 0..5 {
        let report = reconciler.run_once().await.unwrap();
        assert_eq!((report.drift.len(), report.failed.len()), (0, 0));
        checked += report.checked;
    }
    assert!(checked >= 2000, "every created SKU checked: {checked}");
    assert_eq!(reaper.run_once().await.unwrap(), 0);

    // Idle: each pass costs its sweep slice and a few commands. Before
    // activity hints, one reaper pass ran 2,000 scripts, one reconciler
    // pass 2,000 snapshots, one claim round 2,000 XAUTOCLAIMs.
    let mut redis = app.redis().await;
    reset_stats(&mut redis).await;
    for _ in 0..5 {
        let report = worker.run_once().await.unwrap();
        assert_eq!((report.applied, report.skipped), (0, 0));
    }
    let stats = command_calls(&mut redis).await;
    let worker_calls = calls(&stats, "total");
    assert!(calls(&stats, "xlen") <= 5 * SWEEP as u64, "{stats:?}");
    assert_eq!(calls(&stats, "xread"), 5, "{stats:?}");
    assert_eq!(
        calls(&stats, "xreadgroup") + calls(&stats, "xautoclaim") + calls(&stats, "evalsha"),
        0,
        "{stats:?}"
    );
    assert!(worker_calls <= 5 * (SWEEP as u64 + 5), "{stats:?}");

    reset_stats(&mut redis).await;
    for _ in 0..5 {
        assert_eq!(reaper.run_once().await.unwrap(), 0);
    }
    let stats = command_calls(&mut redis).await;
    assert!(calls(&stats, "zrange") <= 5 * SWEEP as u64, "{stats:?}");
    assert_eq!(calls(&stats, "zrangebyscore"), 5, "{stats:?}");
    assert_eq!(calls(&stats, "evalsha"), 0, "no script: nothing due");
    assert!(
        calls(&stats, "total") <= 5 * (SWEEP as u64 + 5),
        "{stats:?}"
    );

    reset_stats(&mut redis).await;
    let mut checked = 0;
    for _ in 0..2 {
        let report = reconciler.run_once().await.unwrap();
        assert_eq!((report.drift.len(), report.failed.len()), (0, 0));
        assert!(report.checked <= SWEEP, "the sweep's slice: {report:?}");
        checked += report.checked as u64;
    }
    let stats = command_calls(&mut redis).await;
    assert_eq!(
        calls(&stats, "evalsha"),
        checked,
        "one snapshot per swept SKU: {stats:?}"
    );
    // INFO commandstats counts the commands a script runs too: four in
    // each snapshot.
    assert!(
        calls(&stats, "total") <= 2 * (5 * SWEEP as u64 + 8),
        "{stats:?}"
    );

    // Activity on three of them: per SKU one hold confirmed, one released,
    // one abandoned until it expires.
    let active = ["idle-0100", "idle-0500", "idle-1500"];
    let mut abandoned_holds = Vec::new();
    for name in active {
        let kept = admit(&app, name, "a").await;
        let released = admit(&app, name, "b").await;
        let abandoned = admit(&app, name, "c").await;
        let confirm = app
            .hold_action(kept["hold_id"].as_str().unwrap(), "confirm")
            .await;
        assert_eq!(confirm.status(), 200);
        let release = app
            .hold_action(released["hold_id"].as_str().unwrap(), "release")
            .await;
        assert_eq!(release.status(), 200);
        abandoned_holds.push(abandoned["hold_id"].as_str().unwrap().to_owned());
    }
    let active: Vec<String> = active.iter().map(|s| (*s).to_owned()).collect();
    drain(&mut worker, &app, &active).await;
    for name in &active {
        assert_eq!(app.ledger_counts(name).await, (10, 1, 1));
    }
    assert_eq!(reaper.run_once().await.unwrap(), 0, "nothing due yet");
    for (name, hold) in active.iter().zip(&abandoned_holds) {
        app.make_due(name, hold).await;
    }
    assert_eq!(reaper.run_once().await.unwrap(), 3, "one per SKU");
    assert_eq!(reaper.run_once().await.unwrap(), 0, "once");
    drain(&mut worker, &app, &active).await;
    for name in &active {
        assert_eq!(app.ledger_counts(name).await, (10, 0, 1));
        assert_eq!(app.sku(name).await["available"], 9);
    }
    assert_eq!(
        app.count("SELECT count(*) FROM holds WHERE state = 'expired'")
            .await,
        3
    );
    assert_eq!(
        app.count("SELECT count(*) FROM holds WHERE state = 'confirmed'")
            .await,
        3
    );
    assert_eq!(
        app.count("SELECT count(*) FROM holds WHERE state = 'released'")
            .await,
        3
    );
    // 2,000 creations, and per active SKU 3 admits, a confirm, a release
    // and an expiry.
    assert_eq!(
        app.count("SELECT count(*) FROM movements").await,
        2000 + 3 * 6
    );

    // Drift on one of them; its hints bring the reconciler there at once.
    app.tamper_stock("idle-0500", "HINCRBY", "held", 5).await;
    let report = reconciler.run_once().await.unwrap();
    assert_eq!(
        report.drift,
        vec![Drift {
            sku: sku("idle-0500"),
            on_hand: 0,
            held: 5,
            sold: 0,
            repaired: true,
        }]
    );
    assert_eq!(app.sku("idle-0500").await["held"], 0);
    assert_eq!(
        app.count("SELECT count(*) FROM movements WHERE kind = 'reconcile'")
            .await,
        1
    );
    let again = reconciler.run_once().await.unwrap();
    assert!(again.drift.is_empty(), "{again:?}");
    let audit = dropgate::audit::audit(&app.app).await.unwrap();
    assert!(audit.ok(), "{}", audit.table());
    app.stop().await;
}

/// A second gatekeeper that admits and dies before it publishes its hints:
/// its admission is in the gate, and nothing points at it.
async fn admit_and_die(app: &TestApp, name: &str) -> String {
    let other = dropgate::startup::connect(&app_stores(app)).await.unwrap();
    let admitted = other
        .admit(
            &sku(name),
            &CustomerId::parse("lost-customer").unwrap(),
            Quantity::parse(1).unwrap(),
            &IdempotencyKey::parse("lost-key").unwrap(),
        )
        .await
        .unwrap();
    let hold = admitted.hold.expect("a hold");
    drop(other);
    hold.hold_id.to_string()
}

fn app_stores(app: &TestApp) -> dropgate::config::StoreConfig {
    dropgate::config::StoreConfig {
        database_url: format!("{}/{}", common::PG_BASE, app.database),
        redis_url: app.redis_url.clone(),
        key_prefix: app.prefix.clone(),
        store_timeout_ms: 10_000,
    }
}

#[tokio::test]
async fn work_whose_hint_was_lost_is_found_by_the_sweep() {
    let mut config = test_config();
    (config.no_worker, config.no_reaper, config.no_reconciler) = (true, true, true);
    let app = spawn_app_with(config).await;
    let catalogue = names("quiet", 100);
    create_skus(&app.app, &catalogue).await;
    let mut worker = Worker::new(app.app.clone(), worker_config()).unwrap();
    drain(&mut worker, &app, &catalogue).await;

    // The reconciler has seen the creations' hints: from here on only its
    // sweep leads it anywhere.
    let reconciler = Reconciler::with_config(app.app.clone(), reconciler_config());
    reconciler.run_once().await.unwrap();

    let activity = format!("{}:activity", app.prefix);
    let mut redis = app.redis().await;
    let last: Vec<(String, BTreeMap<String, String>)> = redis::cmd("XREVRANGE")
        .arg(&activity)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut redis)
        .await
        .unwrap();
    let hold = admit_and_die(&app, "quiet-0037").await;
    // Lost indeed: no hint came since, and the SKU is not due.
    let since: Vec<(String, BTreeMap<String, String>)> = redis::cmd("XRANGE")
        .arg(&activity)
        .arg(format!("({}", last[0].0))
        .arg("+")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(since, vec![]);
    let due: Option<f64> = redis::cmd("ZSCORE")
        .arg(format!("{}:due", app.prefix))
        .arg("quiet-0037")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(due, None);

    // One round of the sweep (100 SKUs, 20 a pass) finds the event.
    let round = catalogue.len() / SWEEP + 1;
    let mut applied = 0;
    for _ in 0..round {
        applied += worker.run_once().await.unwrap().applied;
    }
    assert_eq!(applied, 1, "the admission, once");
    assert_eq!(app.ledger_counts("quiet-0037").await, (10, 1, 0));
    assert_eq!(backlog(&app, &catalogue).await, 0, "acknowledged, trimmed");

    // The reaper's sweep finds the hold once it is due (by Redis's clock;
    // no hint says so).
    app.place_expiry("quiet-0037", &hold, app.redis_now_ms().await - 1)
        .await;
    let reaper = Reaper::with_config(app.app.clone(), reaper_config());
    let mut expired = 0;
    for _ in 0..round {
        expired += reaper.run_once().await.unwrap();
    }
    assert_eq!(expired, 1);
    assert_eq!(drain(&mut worker, &app, &catalogue).await, 1, "the expiry");
    assert_eq!(app.ledger_counts("quiet-0037").await, (10, 0, 0));

    // Drift that no event announces: the reconciler's sweep finds it,
    // and repairs it once.
    app.tamper_stock("quiet-0063", "HINCRBY", "on_hand", 2)
        .await;
    let mut drift = Vec::new();
    for _ in 0..round + 1 {
        drift.extend(reconciler.run_once().await.unwrap().drift);
    }
    let drift: Vec<&Drift> = drift
        .iter()
        .filter(|d| d.sku.as_str() == "quiet-0063")
        .collect();
    assert_eq!(
        drift,
        vec![&Drift {
            sku: sku("quiet-0063"),
            on_hand: 2,
            held: 0,
            sold: 0,
            repaired: true,
        }]
    );
    assert_eq!(app.sku("quiet-0063").await["on_hand"], 10);
    let audit = dropgate::audit::audit(&app.app).await.unwrap();
    assert!(audit.ok(), "{}", audit.table());
    app.stop().await;
}

#[tokio::test]
async fn a_restarted_worker_reads_what_the_recent_hints_name() {
    // A worker that starts after the events were hinted (the first worker
    // died, or none ran) reads them from the hints' recent past at once,
    // without waiting for the sweep to come round.
    let mut config = test_config();
    (config.no_worker, config.no_reaper, config.no_reconciler) = (true, true, true);
    let app = spawn_app_with(config).await;
    let catalogue = names("later", 300);
    create_skus(&app.app, &catalogue).await;
    app.create_sku("later-hot", json!({"on_hand": 5})).await;
    for customer in ["a", "b", "c"] {
        admit(&app, "later-hot", customer).await;
    }
    // Published by the app's publisher, which the services here do not
    // wait for: make sure.
    app.app.gate.publish_activity().await.unwrap();
    let mut worker = Worker::new(
        app.app.clone(),
        worker::Config {
            // No sweep in this test: only hints lead the worker.
            sweep_interval: Duration::from_secs(3600),
            sweep_skus: 0,
            ..worker_config()
        },
    )
    .unwrap();
    let mut applied = 0;
    for _ in 0..5 {
        applied += worker.run_once().await.unwrap().applied;
    }
    assert_eq!(applied, 3, "the three admissions, once");
    assert_eq!(app.ledger_counts("later-hot").await, (5, 3, 0));
    assert_eq!(backlog(&app, &catalogue).await, 0);
    app.stop().await;
}
