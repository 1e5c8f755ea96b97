//! Fencing: while the gate rebuilds a SKU from the ledger, the SKU is
//! closed, so no admission lands in keys that are being rewritten. Every
//! `201` is a hold the rebuilt gate and the ledger both have; everything
//! else is `503 unavailable` and left nothing behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestApp, assert_problem, body, spawn_app};
use dropgate::domain::{HoldId, HoldState, SkuId};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Clients admitting at once, each one request after the other.
const CLIENTS: usize = 8;
/// Rebuilds at least this many times, and until one admission met a closed
/// SKU (bounded by `MAX_REBUILDS`).
const MIN_REBUILDS: usize = 3;
const MAX_REBUILDS: usize = 40;
/// Admissions answered between two rebuilds, so each has a stream to flush.
const ADMITTED_PER_ROUND: u64 = 20;

/// What the clients saw.
#[derive(Default)]
struct Answers {
    held: std::sync::Mutex<Vec<HoldId>>,
    held_count: AtomicU64,
    unavailable: AtomicU64,
}

/// One client: admits one unit after another under fresh keys until `stop`,
/// recording each 201 and counting each 503. Any other answer fails the test.
async fn client(app: Arc<TestApp>, n: usize, answers: Arc<Answers>, stop: Arc<AtomicBool>) {
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let key = format!("k-{n}-{i}");
        let response = app.admit("drop", &key, &format!("c-{n}"), 1).await;
        match response.status().as_u16() {
            201 => {
                let hold = body(response).await["hold_id"]
                    .as_str()
                    .and_then(HoldId::parse)
                    .expect("a hold id");
                answers.held.lock().unwrap().push(hold);
                answers.held_count.fetch_add(1, Ordering::Relaxed);
            }
            503 => {
                assert_problem(response, 503, "unavailable").await;
                answers.unavailable.fetch_add(1, Ordering::Relaxed);
            }
            status => panic!("{key}: {status} {:?}", response.text().await),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hold_admitted_while_a_sku_is_closed_and_rebuilt_is_kept() {
    let app = Arc::new(spawn_app().await);
    app.create_sku("drop", json!({"on_hand": 1_000_000})).await;
    let sku = SkuId::parse("drop").unwrap();
    let answers = Arc::new(Answers::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let (app, answers, stop) = (app.clone(), answers.clone(), stop.clone());
            tokio::spawn(client(app, n, answers, stop))
        })
        .collect();

    // Rebuild the gate again and again under the clients' load: each time
    // the SKU is closed, its stream flushed into the ledger, and the SKU
    // written anew from the ledger's snapshot.
    let mut rebuilds = 0;
    while rebuilds < MAX_REBUILDS {
        let target = answers.held_count.load(Ordering::Relaxed) + ADMITTED_PER_ROUND;
        while answers.held_count.load(Ordering::Relaxed) < target {
            assert!(clients.iter().all(|c| !c.is_finished()), "a client failed");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        app.app.gate.forget_epoch().await.unwrap();
        dropgate::rebuild::ensure_gate(&app.app)
            .await
            .expect("the gate is rebuilt");
        rebuilds += 1;
        if rebuilds >= MIN_REBUILDS && answers.unavailable.load(Ordering::Relaxed) > 0 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("a client ran to the end");
    }
    let held: Vec<HoldId> = answers.held.lock().unwrap().clone();
    let unavailable = answers.unavailable.load(Ordering::Relaxed);
    assert!(
        unavailable > 0,
        "no admission met the closed SKU in {rebuilds} rebuilds"
    );
    let admitted: BTreeSet<HoldId> = held.iter().copied().collect();
    assert_eq!(admitted.len(), held.len(), "hold ids are unique");
    let units = held.len() as i64;

    // The rebuilt gate has every answered hold, live, and no other.
    app.app
        .flush(&sku, None)
        .await
        .expect("the stream reaches the ledger");
    let gate = &app.app.gate;
    assert_eq!(gate.live_holds(&sku).await.unwrap(), units);
    let figures = gate.sku(&sku).await.unwrap().expect("the SKU is open");
    assert_eq!(
        (
            figures.stock.on_hand,
            figures.stock.held,
            figures.stock.sold
        ),
        (1_000_000, units, 0)
    );
    for hold in &held {
        let in_gate = gate.hold(&sku, *hold).await.unwrap();
        assert_eq!(in_gate.map(|h| h.state), Some(HoldState::Held), "{hold}");
    }

    // So does the ledger: the same holds, all held, none lost.
    let pool = app.pg().await;
    let rows: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT hold_id, state FROM holds WHERE sku = 'drop'")
            .fetch_all(&pool)
            .await
            .unwrap();
    let in_ledger: BTreeSet<HoldId> = rows.iter().map(|(id, _)| HoldId::from_uuid(*id)).collect();
    assert_eq!(in_ledger, admitted, "the ledger has exactly the 201 holds");
    assert!(rows.iter().all(|(_, state)| state == "held"), "{rows:?}");
    let lost: i64 = sqlx::query_scalar("SELECT count(*) FROM movements WHERE kind = 'lost'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(lost, 0, "no hold lost");
    pool.close().await;
    assert_eq!(app.ledger_counts("drop").await, (1_000_000, units, 0));
    let audit = dropgate::audit::audit(&app.app).await.expect("audit runs");
    assert!(audit.ok(), "{}", audit.table());

    Arc::into_inner(app).expect("clients are done").stop().await;
}

#[tokio::test]
async fn a_closed_sku_answers_503_to_every_change_until_it_is_rebuilt() {
    let app = spawn_app().await;
    app.create_sku("drop", json!({"on_hand": 10})).await;
    let sku = SkuId::parse("drop").unwrap();
    let mut holds = Vec::new();
    for key in ["k1", "k2"] {
        let response = app.admit("drop", key, key, 1).await;
        assert_eq!(response.status(), 201, "{key}");
        holds.push(body(response).await["hold_id"].as_str().unwrap().to_owned());
    }

    app.app.gate.close_sku(&sku).await.unwrap();

    let adjust = app
        .client
        .post(app.url("/v1/skus/drop/adjustments"))
        .bearer_auth(common::ADMIN)
        .json(&json!({"delta": 5, "reason": "found a box"}));
    let refused = [
        ("admit", app.admit("drop", "k3", "k3", 1).await),
        ("replay", app.admit("drop", "k1", "k1", 1).await),
        ("confirm", app.hold_action(&holds[0], "confirm").await),
        ("release", app.hold_action(&holds[0], "release").await),
        ("extend", app.hold_action(&holds[0], "extend").await),
        ("put", app.put_sku("drop", json!({"on_hand": 20})).await),
        ("adjust", adjust.send().await.unwrap()),
    ];
    for (what, response) in refused {
        assert_eq!(response.status(), 503, "{what}");
        assert_problem(response, 503, "unavailable").await;
    }
    // Nothing happened: the stream holds only what came before the close.
    app.app.flush(&sku, None).await.unwrap();
    assert_eq!(app.ledger_counts("drop").await, (10, 2, 0));

    app.app.gate.forget_epoch().await.unwrap();
    dropgate::rebuild::ensure_gate(&app.app).await.unwrap();

    assert_eq!(app.hold_action(&holds[0], "confirm").await.status(), 200);
    let replay = app.admit("drop", "k1", "k1", 1).await;
    assert_eq!(replay.status(), 201, "a replay after the rebuild");
    assert_eq!(body(replay).await["hold_id"], holds[0].as_str());
    assert_eq!(app.admit("drop", "k3", "k3", 1).await.status(), 201);
    app.app.flush(&sku, None).await.unwrap();
    assert_eq!(app.ledger_counts("drop").await, (10, 2, 1));
    let figures = app.app.gate.sku(&sku).await.unwrap().expect("open");
    assert_eq!(
        (
            figures.stock.on_hand,
            figures.stock.held,
            figures.stock.sold
        ),
        (10, 2, 1)
    );
    app.stop().await;
}
