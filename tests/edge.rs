//! The edge of the process: what a hostile or careless client can send
//! before any store is asked. Text that would reach Postgres, request heads
//! over the limits, forged request ids, made-up SKUs claiming metric labels,
//! slow or idle connections, and more requests than the process can carry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::RedisServer;
use common::{ADMIN, TestApp, assert_problem, body, spawn_app, spawn_app_with, test_config};
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

#[tokio::test]
async fn long_request_targets_and_large_header_fields_get_problems() {
    let app = spawn_app().await;
    let long_path = format!("/v1/skus/{}", "a".repeat(9000));
    let response = app.get(&long_path).await;
    let problem = assert_problem(response, 414, "uri_too_long").await;
    assert!(problem["detail"].as_str().unwrap().contains("8192"));
    let long_query = format!("/v1/skus?after={}", "a".repeat(9000));
    assert_problem(app.get(&long_query).await, 414, "uri_too_long").await;

    let big_header = app
        .client
        .get(app.url("/healthz"))
        .header("x-padding", "p".repeat(17 * 1024))
        .send()
        .await
        .unwrap();
    assert_problem(big_header, 431, "header_fields_too_large").await;

    let mut many = app.client.get(app.url("/healthz"));
    for i in 0..101 {
        many = many.header(format!("x-h{i}"), "1");
    }
    assert_problem(many.send().await.unwrap(), 431, "header_fields_too_large").await;

    // Just under every limit is served.
    let mut fine = app.client.get(app.url("/healthz"));
    for i in 0..90 {
        fine = fine.header(format!("x-h{i}"), "1");
    }
    assert_eq!(fine.send().await.unwrap().status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn only_short_token_request_ids_are_echoed() {
    let app = spawn_app().await;
    let echoed = |id: String| {
        let app = &app;
        async move {
            let response = app
                .client
                .get(app.url("/healthz"))
                .header("x-request-id", id)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    for kept in ["abc-123", "A.b_c-9", &"x".repeat(64)] {
        assert_eq!(echoed(kept.to_owned()).await, kept);
    }
    for replaced in [
        "x".repeat(65),
        "two words".to_owned(),
        "<script>".to_owned(),
        "id\"quoted".to_owned(),
        "é".to_owned(),
    ] {
        let id = echoed(replaced.clone()).await;
        assert_ne!(id, replaced);
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    }
    app.stop().await;
}

/// The `sku` label values of `dropgate_admissions_by_sku_total`.
async fn labelled_skus(app: &TestApp) -> Vec<String> {
    let text = app.get("/metrics").await.text().await.unwrap();
    let mut skus: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("dropgate_admissions_by_sku_total{"))
        .filter_map(|l| {
            l.split("sku=\"")
                .nth(1)?
                .split('"')
                .next()
                .map(str::to_owned)
        })
        .collect();
    skus.sort();
    skus.dedup();
    skus
}

#[tokio::test]
async fn made_up_skus_claim_no_metric_label() {
    let mut redis = common::process::start_redis().await;
    let mut config = test_config();
    config.stores.redis_url = redis.url();
    config.stores.store_timeout_ms = 500;
    let app = spawn_app_with(config).await;
    app.create_sku("real-sku", json!({"on_hand": 5})).await;
    assert_eq!(app.admit("real-sku", "k1", "c1", 1).await.status(), 201);
    assert_problem(app.admit("ghost-1", "k2", "c2", 1).await, 404, "not_found").await;
    // With Redis gone an admission fails before anyone knows whether the
    // SKU exists: that must not claim a label either.
    redis.kill();
    assert_problem(
        app.admit("ghost-2", "k3", "c3", 1).await,
        503,
        "unavailable",
    )
    .await;

    let skus = labelled_skus(&app).await;
    assert!(skus.contains(&"real-sku".to_owned()), "{skus:?}");
    assert!(skus.contains(&"other".to_owned()), "{skus:?}");
    assert!(!skus.iter().any(|s| s.starts_with("ghost")), "{skus:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_in_flight_limit_requests_are_shed_and_nothing_is_half_done() {
    const LIMIT: usize = 4;
    const REQUESTS: usize = 20;
    let redis = common::process::start_redis().await;
    let mut config = test_config();
    config.stores.redis_url = redis.url();
    config.max_in_flight = LIMIT as u32;
    let app = std::sync::Arc::new(spawn_app_with(config).await);
    app.create_sku(SKU, json!({"on_hand": 100})).await;

    // Redis holds every command for a while, so admissions stay in flight.
    let mut control = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "3000", "ALL"])
        .query_async(&mut control)
        .await
        .unwrap();
    let batch = {
        let app = app.clone();
        tokio::spawn(async move {
            let requests = (0..REQUESTS).map(|i| {
                let app = app.clone();
                async move {
                    let key = format!("k{i}");
                    (key.clone(), app.admit(SKU, &key, &key, 1).await)
                }
            });
            futures::future::join_all(requests).await
        })
    };
    // While the limit is taken, operations endpoints still answer and any
    // other request is shed at once.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_problem(
        app.get(&format!("/v1/skus/{SKU}")).await,
        503,
        "unavailable",
    )
    .await;

    let mut admitted = 0;
    let mut shed = Vec::new();
    for (key, response) in batch.await.unwrap() {
        match response.status().as_u16() {
            201 => admitted += 1,
            503 => {
                assert_eq!(response.headers()["retry-after"], "1");
                let problem = assert_problem(response, 503, "unavailable").await;
                assert_eq!(problem["detail"], "dropgate is shedding load");
                shed.push(key);
            }
            other => panic!("{key}: {other}"),
        }
    }
    assert_eq!((admitted, shed.len()), (LIMIT, REQUESTS - LIMIT));
    assert_eq!(app.sku(SKU).await["held"], LIMIT as i64);

    // A shed request left nothing behind: its key is decided afresh.
    for key in &shed {
        let response = app.admit(SKU, key, key, 1).await;
        assert_eq!(response.status(), 201, "{key}");
        assert!(response.headers().get("idempotent-replayed").is_none());
    }
    app.wait_for_ledger(SKU).await;
    assert_eq!(app.ledger_counts(SKU).await, (100, REQUESTS as i64, 0));
    assert_eq!(movements(&app).await, 1 + REQUESTS as i64);
    std::sync::Arc::into_inner(app).unwrap().stop().await;
}

/// Reads until the server closes the connection; false if it is still open
/// after `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_cut_and_a_normal_client_is_served_throughout() {
    use tokio::io::AsyncWriteExt;
    let mut config = test_config();
    config.header_timeout_ms = 1000;
    let app = std::sync::Arc::new(spawn_app_with(config).await);

    // A normal client, asking all along.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let normal = {
        let (app, stop) = (app.clone(), stop.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let response = app.client.get(app.url("/healthz")).send().await;
                statuses.push(response.map(|r| r.status().as_u16()).unwrap_or(0));
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            statuses
        })
    };

    // 200 connections that start a request and never finish its head.
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: dropgate\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(stream);
    }
    for stream in &mut slow {
        assert!(
            closed_within(stream, std::time::Duration::from_secs(15)).await,
            "a slow connection was left open"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = normal.await.unwrap();
    assert!(!statuses.is_empty());
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let cut: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("dropgate_http_slow_connections_closed_total "))
        .map_or(0, |v| v.trim().parse().unwrap());
    assert!(cut >= 200, "{cut}");
    std::sync::Arc::into_inner(app).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_outlives_the_header_timeout_but_not_the_idle_timeout() {
    let mut config = test_config();
    config.header_timeout_ms = 200;
    config.idle_timeout_ms = 3000;
    let app = spawn_app_with(config).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    assert!(healthz_on(&mut stream).await.starts_with("HTTP/1.1 200"));
    // Past the header timeout, the kept-alive connection still serves.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(healthz_on(&mut stream).await.starts_with("HTTP/1.1 200"));
    // Idle past the idle timeout, it is closed.
    assert!(closed_within(&mut stream, std::time::Duration::from_secs(10)).await);
    app.stop().await;
}

/// Sends GET /healthz on a raw connection; the answer's text.
async fn healthz_on(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: dropgate\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = vec![0u8; 4096];
    let mut read = 0;
    while !String::from_utf8_lossy(&buffer[..read]).contains("{\"status\":\"ok\"}") {
        let n = stream.read(&mut buffer[read..]).await.unwrap();
        assert!(n > 0, "closed before answering");
        read += n;
    }
    String::from_utf8_lossy(&buffer[..read]).into_owned()
}

/// XLEN calls a Redis served so far: the dashboard sends one per SKU
/// shown, and (with the background services off) nothing else does.
async fn xlen_calls(redis: &RedisServer) -> u64 {
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_xlen:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dashboard_computation_serves_every_viewer_of_an_interval() {
    const VIEWERS: usize = 20;
    let redis = common::process::start_redis().await;
    let mut config = test_config();
    config.stores.redis_url = redis.url();
    config.dashboard_interval_ms = 1000;
    (config.no_worker, config.no_reaper, config.no_reconciler) = (true, true, true);
    let app = spawn_app_with(config).await;
    app.create_sku(SKU, json!({"on_hand": 10})).await;
    let before = xlen_calls(&redis).await;

    let view = || async {
        let response = app
            .client
            .get(app.url("/v1/dashboard"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        body(response).await
    };
    let views = futures::future::join_all((0..VIEWERS).map(|_| view())).await;
    assert_eq!(xlen_calls(&redis).await, before + 1, "one computation");
    assert!(views.iter().all(|view| *view == views[0]));
    assert_eq!(views[0]["skus"][0]["sku"], SKU);

    // The next interval computes afresh: viewers polling across the
    // boundary see one new computation, not one each.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let later = loop {
        let later = view().await;
        if later["generated_at"] != views[0]["generated_at"] {
            break later;
        }
        assert!(std::time::Instant::now() < deadline, "never recomputed");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(xlen_calls(&redis).await, before + 2, "a second computation");
    assert_ne!(later["generated_at"], views[0]["generated_at"]);
    app.stop().await;
}

#[tokio::test]
async fn the_operations_listener_serves_dashboard_and_metrics_apart_from_the_api() {
    let ops_port = common::process::free_port();
    let mut config = test_config();
    config.ops_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], ops_port)));
    let app = spawn_app_with(config).await;
    app.create_sku(SKU, json!({"on_hand": 10})).await;
    let ops = |path: &str| {
        let request = app.client.get(format!("http://127.0.0.1:{ops_port}{path}"));
        async move { request.send().await.unwrap() }
    };

    // The public listener: the API and the probes, nothing for operators.
    for path in ["/", "/metrics", "/v1/dashboard", "/dashboard.js"] {
        assert_problem(app.get(path).await, 404, "not_found").await;
    }
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        assert_eq!(app.get(path).await.status(), 200, "{path}");
    }
    assert_eq!(app.sku(SKU).await["on_hand"], 10);

    // The operations listener: dashboard, metrics and probes, no API.
    let page = ops("/").await;
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let metrics = ops("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("dropgate_build_info"), "{metrics}");
    let figures = body(ops("/v1/dashboard").await).await;
    assert_eq!(figures["skus"][0]["sku"], SKU);
    assert_eq!(figures["skus"][0]["on_hand"], 10);
    assert_eq!(ops("/readyz").await.status(), 200);
    assert_problem(ops(&format!("/v1/skus/{SKU}")).await, 404, "not_found").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_viewers_than_the_operations_listeners_connection_cap_are_all_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    // More keep-alive viewers than the operations listener's 32 connections,
    // each polling as fast as it is answered, as browsers keep polling.
    const VIEWERS: usize = 48;
    let ops_port = common::process::free_port();
    let mut config = test_config();
    config.ops_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], ops_port)));
    let app = spawn_app_with(config).await;
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let viewers = (0..VIEWERS).map(|_| {
        let served = served.clone();
        tokio::spawn(async move {
            let mut answered = false;
            let mut stream: Option<TcpStream> = None;
            while served.load(std::sync::atomic::Ordering::SeqCst) < VIEWERS {
                let open = match stream.as_mut() {
                    Some(open) => open,
                    None => {
                        stream.insert(TcpStream::connect(("127.0.0.1", ops_port)).await.unwrap())
                    }
                };
                open.write_all(b"GET /healthz HTTP/1.1\r\nHost: dropgate\r\n\r\n")
                    .await
                    .unwrap();
                let mut buffer = vec![0u8; 4096];
                let mut read = 0;
                while !String::from_utf8_lossy(&buffer[..read]).contains("{\"status\":\"ok\"}") {
                    let n = open.read(&mut buffer[read..]).await.unwrap();
                    assert!(n > 0, "closed before answering");
                    read += n;
                }
                if !answered {
                    answered = true;
                    served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                // A browser opens a new connection when told to close.
                let head = String::from_utf8_lossy(&buffer[..read]).to_ascii_lowercase();
                if head.contains("connection: close") {
                    stream = None;
                }
            }
        })
    });
    let viewers: Vec<_> = viewers.collect();
    let all = futures::future::join_all(viewers);
    let finished = tokio::time::timeout(std::time::Duration::from_secs(30), all).await;
    let Ok(viewers) = finished else {
        let served = served.load(std::sync::atomic::Ordering::SeqCst);
        panic!("{served} of {VIEWERS} viewers served; the rest wait behind the cap");
    };
    for viewer in viewers {
        viewer.unwrap();
    }
    app.stop().await;
}
