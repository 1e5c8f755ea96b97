//! One clock: every decision by time reads Redis's clock, so gatekeepers
//! whose own clocks disagree by seconds decide exactly as one would. One
//! gatekeeper runs in the test with the machine's clock, the other as a
//! child process 5 s ahead under libfaketime; both answer `expires_at`,
//! `Retry-After`, extensions and expiry from Redis's `TIME`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::{Dropgate, faketime_library, free_port};
use common::{
    STOREFRONT, TestApp, assert_problem, body, expires_at_ms, spawn_app_with, test_config,
};
use reqwest::Response;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

const TTL_MS: i64 = 60_000;
const SKEW_S: i64 = 5;

/// A second gatekeeper on the same stores, its clock `SKEW_S` ahead. It
/// runs its reaper (every 200 ms); the test's own gatekeeper runs none.
struct Skewed {
    process: Dropgate,
    client: reqwest::Client,
}

impl Skewed {
    fn start(app: &TestApp, faketime: &str) -> Self {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut env = app.child_env(Some(listen));
        env.extend([
            ("LD_PRELOAD", faketime.to_owned()),
            ("FAKETIME", format!("+{SKEW_S}s")),
            // Timers and timeouts keep the true pace; only the wall clock is off.
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
        ]);
        let process = Dropgate::spawn(
            &["serve", "--no-worker", "--no-reconciler"],
            &env,
            Some(listen),
        );
        Self {
            process,
            client: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.process.addr)
    }

    async fn admit(&self, sku: &str, key: &str, customer: &str) -> Response {
        self.client
            .post(self.url(&format!("/v1/skus/{sku}/holds")))
            .bearer_auth(STOREFRONT)
            .header("Idempotency-Key", key)
            .json(&json!({"customer_id": customer, "quantity": 1}))
            .send()
            .await
            .expect("admit on the skewed gatekeeper")
    }

    async fn hold_action(&self, hold: &str, action: &str) -> Response {
        self.client
            .post(self.url(&format!("/v1/holds/{hold}/{action}")))
            .bearer_auth(STOREFRONT)
            .send()
            .await
            .expect("hold action on the skewed gatekeeper")
    }

    async fn state(&self, hold: &str) -> String {
        let response = self
            .client
            .get(self.url(&format!("/v1/holds/{hold}")))
            .bearer_auth(STOREFRONT)
            .send()
            .await
            .expect("GET the hold");
        body(response).await["state"].as_str().unwrap().to_owned()
    }
}

/// The `Date` a response carries, unix seconds: the answering process's
/// own clock.
fn date_s(response: &Response) -> i64 {
    let date = response.headers()["date"].to_str().unwrap();
    let format = time::format_description::well_known::Rfc2822;
    time::OffsetDateTime::parse(date, &format)
        .expect("an HTTP date")
        .unix_timestamp()
}

fn retry_after(response: &Response) -> Option<&str> {
    response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap())
}

/// An answer with `status` whose hold expires `TTL_MS` after Redis's clock
/// at some moment of the request (Redis read before it, and now); the hold.
async fn assert_expires_by_redis_time(
    app: &TestApp,
    response: Response,
    status: u16,
    before_ms: i64,
) -> serde_json::Value {
    let after_ms = app.redis_now_ms().await;
    assert_eq!(response.status(), status);
    let hold = body(response).await;
    let expires = expires_at_ms(&hold);
    assert!(
        (before_ms + TTL_MS..=after_ms + TTL_MS).contains(&expires),
        "expires_at {expires} is not Redis's now + {TTL_MS} ms ({before_ms}..={after_ms})"
    );
    hold
}

/// A fresh hold, checked by [`assert_expires_by_redis_time`]; its id.
async fn held(app: &TestApp, response: Response, before_ms: i64) -> String {
    let hold = assert_expires_by_redis_time(app, response, 201, before_ms).await;
    hold["hold_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gatekeepers_whose_clocks_differ_by_seconds_decide_as_one() {
    let Some(faketime) = faketime_library() else {
        eprintln!("skipped: libfaketime is not installed (apt-get install faketime)");
        return;
    };
    let mut config = test_config();
    config.no_reaper = true;
    let app = spawn_app_with(config).await;
    app.create_sku(
        "drop",
        json!({"on_hand": 3, "hold_ttl_ms": TTL_MS, "max_extensions": 1}),
    )
    .await;
    let skewed = Skewed::start(&app, faketime);

    // The skew is real: the child's own clock is 5 s ahead.
    let ours = app.get("/healthz").await;
    let theirs = skewed
        .client
        .get(skewed.url("/healthz"))
        .send()
        .await
        .unwrap();
    let ahead_s = date_s(&theirs) - date_s(&ours);
    assert!(
        (SKEW_S - 1..=SKEW_S + 1).contains(&ahead_s),
        "the child's clock is {ahead_s} s ahead"
    );

    // Admission: expires_at is Redis's now + TTL on either gatekeeper.
    let before = app.redis_now_ms().await;
    let a = held(&app, app.admit("drop", "a", "c-a", 1).await, before).await;
    let before = app.redis_now_ms().await;
    let b = held(&app, skewed.admit("drop", "b", "c-b").await, before).await;
    let before = app.redis_now_ms().await;
    let c = held(&app, skewed.admit("drop", "c", "c-c").await, before).await;

    // Retry-After: both count to the first expiry by Redis's clock. Placed
    // 30.5 s ahead, it is 31 s (rounded up) for both; the skewed clock
    // alone would say 26.
    let first = app.redis_now_ms().await + 30_500;
    for hold in [&a, &b, &c] {
        app.place_expiry("drop", hold, first + 20_000).await;
    }
    app.place_expiry("drop", &a, first).await;
    let ours = app.admit("drop", "d", "c-d", 1).await;
    let theirs = skewed.admit("drop", "e", "c-e").await;
    assert_eq!(
        (ours.status().as_u16(), theirs.status().as_u16()),
        (409, 409)
    );
    assert_eq!(
        (retry_after(&ours), retry_after(&theirs)),
        (Some("31"), Some("31"))
    );

    // Extension: Redis's now + TTL, not the skewed clock's.
    let before = app.redis_now_ms().await;
    let extended = skewed.hold_action(&b, "extend").await;
    let extended = assert_expires_by_redis_time(&app, extended, 200, before).await;
    assert_eq!(extended["extensions"], 1);

    // Expiry: 4 s to go by Redis's clock is 1 s past due by the skewed
    // one. The skewed gatekeeper confirms it, and its reaper (a
    // pass every 200 ms) leaves the other such hold alone.
    let soon = app.redis_now_ms().await + 4_000;
    app.place_expiry("drop", &a, soon).await;
    app.place_expiry("drop", &c, soon).await;
    let confirmed = skewed.hold_action(&a, "confirm").await;
    assert_eq!(confirmed.status(), 200);
    assert_eq!(body(confirmed).await["state"], "confirmed");
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(skewed.state(&c).await, "held", "not expired early");

    // Once due by Redis's clock, the skewed gatekeeper's reaper expires
    // it, and both gatekeepers see it expired.
    app.make_due("drop", &c).await;
    for _ in 0..100 {
        if skewed.state(&c).await == "expired" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(skewed.state(&c).await, "expired");
    assert_problem(app.hold_action(&c, "release").await, 409, "hold_expired").await;

    let sku = app.sku("drop").await;
    assert_eq!(
        (
            sku["held"].as_i64(),
            sku["sold"].as_i64(),
            sku["available"].as_i64()
        ),
        (Some(1), Some(1), Some(1))
    );
    drop(skewed);
    app.stop().await;
}
