//! The workload: storefront clients on a few main SKUs with small stock,
//! an admin who adjusts and replaces stock, a probe lane that runs short
//! linearizability windows on fresh SKUs, and a sampler of the ledger and
//! the gate. Every request is recorded; every random choice comes from the
//! run's seed.
//!
//! Clients retry an unknown outcome (timeout, cut connection, 5xx) with the
//! same Idempotency-Key, as the API invites, on either gatekeeper.

use crate::checker::SkuSpec;
use crate::history::{Completion, CustomerUnits, F, Figures, Invocation, Kind, Recorder, Sample};
use crate::topology::{ADMIN_TOKEN, STOREFRONT_TOKEN};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Attempts of one request while its outcome stays unknown.
const ATTEMPTS: usize = 5;
/// Clients of one probe window, and the customers they share (so the
/// per-customer limit is contended).
const PROBE_CLIENTS: usize = 3;
const PROBE_CUSTOMERS: usize = 2;
/// Probe holds live long enough never to expire inside a window.
const PROBE_TTL_MS: i64 = 60_000;

/// What every task of the workload shares.
pub struct Shared {
    pub recorder: Arc<Recorder>,
    client: reqwest::Client,
    nodes: Vec<(String, SocketAddr)>,
    /// Every SKU created, main and probe, for the checker.
    pub specs: Mutex<Vec<SkuSpec>>,
    pub main: Vec<SkuSpec>,
    customers: usize,
}

/// An answer as the workload needs it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub kind: Kind,
    pub body: Option<Value>,
}

impl Answer {
    fn hold_id(&self) -> Option<String> {
        Some(self.body.as_ref()?.get("hold_id")?.as_str()?.to_owned())
    }

    fn on_hand(&self) -> Option<i64> {
        self.body.as_ref()?.get("on_hand")?.as_i64()
    }
}

/// The request of one op: method, path, body, and its Idempotency-Key.
struct Request {
    method: Method,
    path: String,
    body: Option<Value>,
    key_header: Option<String>,
    token: &'static str,
}

impl Shared {
    pub fn new(
        recorder: Arc<Recorder>,
        nodes: Vec<(String, SocketAddr)>,
        main: Vec<SkuSpec>,
        customers: usize,
    ) -> Self {
        Self {
            recorder,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(32)
                .build()
                .unwrap_or_default(),
            nodes,
            specs: Mutex::new(main.clone()),
            main,
            customers,
        }
    }

    /// Sends one request to a gatekeeper the rng picks, recording it.
    async fn send(
        &self,
        f: F,
        mut invocation: Invocation,
        request: Request,
        rng: &mut StdRng,
    ) -> Answer {
        let (node, addr) = &self.nodes[rng.random_range(0..self.nodes.len())];
        invocation.node = node.clone();
        // Some clients give up before the gatekeeper's own store timeout
        // (2 s), some after: both kinds of unknown outcome happen.
        let timeout = Duration::from_millis(rng.random_range(400..3000));
        let op = self.recorder.invoke(f, &invocation);
        let mut builder = self
            .client
            .request(request.method, format!("http://{addr}{}", request.path))
            .bearer_auth(request.token)
            .timeout(timeout);
        if let Some(key) = &request.key_header {
            builder = builder.header("Idempotency-Key", key.as_str());
        }
        if let Some(body) = request.body {
            builder = builder.json(&body);
        }
        let completion = match builder.send().await {
            // Nothing was sent: a definite no.
            Err(error) if error.is_connect() => Completion {
                kind: Kind::Fail,
                status: None,
                code: None,
                answer: None,
                replayed: false,
                error: Some("connection refused".to_owned()),
            },
            Err(error) => unknown(if error.is_timeout() {
                "timeout".to_owned()
            } else {
                format!("request: {error}")
            }),
            Ok(response) => {
                let status = response.status().as_u16();
                let replayed = response
                    .headers()
                    .get("idempotent-replayed")
                    .is_some_and(|v| v.as_bytes() == b"true");
                match response.text().await {
                    Err(error) => unknown(format!("body: {error}")),
                    Ok(text) => {
                        let body: Option<Value> = serde_json::from_str(&text).ok();
                        let code = body
                            .as_ref()
                            .and_then(|b| b.get("code"))
                            .and_then(Value::as_str)
                            .map(str::to_owned);
                        let kind = match status {
                            200..=299 => Kind::Ok,
                            400..=499 => Kind::Fail,
                            _ => Kind::Info,
                        };
                        Completion {
                            kind,
                            status: Some(status),
                            code,
                            answer: body.filter(|_| kind == Kind::Ok),
                            replayed,
                            error: None,
                        }
                    }
                }
            }
        };
        let answer = Answer {
            kind: completion.kind,
            body: completion.answer.clone(),
        };
        self.recorder.complete(op, &invocation.process, completion);
        answer
    }

    /// Sends until the outcome is known or the attempts run out; each
    /// attempt is its own op in the history.
    async fn send_retrying(
        &self,
        f: F,
        invocation: &Invocation,
        request: impl Fn() -> Request,
        rng: &mut StdRng,
    ) -> Answer {
        let mut answer = self.send(f, invocation.clone(), request(), rng).await;
        for _ in 1..ATTEMPTS {
            if answer.kind != Kind::Info {
                break;
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(50..400))).await;
            answer = self.send(f, invocation.clone(), request(), rng).await;
        }
        answer
    }

    async fn admit(
        &self,
        process: &str,
        sku: &str,
        key: &str,
        customer: &str,
        quantity: i64,
        rng: &mut StdRng,
    ) -> Answer {
        let invocation = Invocation {
            process: process.to_owned(),
            sku: sku.to_owned(),
            key: Some(key.to_owned()),
            customer: Some(customer.to_owned()),
            quantity: Some(quantity),
            ..Invocation::default()
        };
        let path = format!("/v1/skus/{sku}/holds");
        let body = json!({"customer_id": customer, "quantity": quantity});
        self.send_retrying(
            F::Admit,
            &invocation,
            || Request {
                method: Method::POST,
                path: path.clone(),
                body: Some(body.clone()),
                key_header: Some(key.to_owned()),
                token: STOREFRONT_TOKEN,
            },
            rng,
        )
        .await
    }

    /// Confirm, release, extend or read a hold. `key` names the admission
    /// when the caller knows it (the sweeper).
    async fn on_hold(
        &self,
        f: F,
        process: &str,
        sku: &str,
        hold_id: &str,
        key: Option<&str>,
        rng: &mut StdRng,
    ) -> Answer {
        let invocation = Invocation {
            process: process.to_owned(),
            sku: sku.to_owned(),
            hold_id: Some(hold_id.to_owned()),
            key: key.map(str::to_owned),
            ..Invocation::default()
        };
        let (method, path) = match f {
            F::Confirm => (Method::POST, format!("/v1/holds/{hold_id}/confirm")),
            F::Release => (Method::POST, format!("/v1/holds/{hold_id}/release")),
            F::Extend => (Method::POST, format!("/v1/holds/{hold_id}/extend")),
            _ => (Method::GET, format!("/v1/holds/{hold_id}")),
        };
        self.send_retrying(
            f,
            &invocation,
            || Request {
                method: method.clone(),
                path: path.clone(),
                body: None,
                key_header: None,
                token: STOREFRONT_TOKEN,
            },
            rng,
        )
        .await
    }

    /// PUT a SKU (admin), retrying while the outcome is unknown.
    pub async fn put_sku(
        &self,
        process: &str,
        spec: &SkuSpec,
        on_hand: i64,
        rng: &mut StdRng,
    ) -> Answer {
        let invocation = Invocation {
            process: process.to_owned(),
            sku: spec.sku.clone(),
            amount: Some(on_hand),
            ..Invocation::default()
        };
        let path = format!("/v1/skus/{}", spec.sku);
        let body = json!({
            "on_hand": on_hand,
            "per_customer_limit": spec.per_customer_limit,
            "hold_ttl_ms": spec.hold_ttl_ms,
            "max_extensions": spec.max_extensions,
        });
        self.send_retrying(
            F::PutSku,
            &invocation,
            || Request {
                method: Method::PUT,
                path: path.clone(),
                body: Some(body.clone()),
                key_header: None,
                token: ADMIN_TOKEN,
            },
            rng,
        )
        .await
    }

    async fn adjust(&self, sku: &str, key: &str, delta: i64, rng: &mut StdRng) -> Answer {
        let invocation = Invocation {
            process: "admin".to_owned(),
            sku: sku.to_owned(),
            key: Some(key.to_owned()),
            amount: Some(delta),
            ..Invocation::default()
        };
        let path = format!("/v1/skus/{sku}/adjustments");
        // The key is in the reason too, so the ledger's movement names the
        // request it came from.
        let body = json!({"delta": delta, "reason": format!("nemesis {key}")});
        self.send_retrying(
            F::Adjust,
            &invocation,
            || Request {
                method: Method::POST,
                path: path.clone(),
                body: Some(body.clone()),
                key_header: Some(key.to_owned()),
                token: ADMIN_TOKEN,
            },
            rng,
        )
        .await
    }

    /// A SKU's figures from one gatekeeper, not recorded as an op.
    pub async fn gate_figures(&self, node: usize, sku: &str) -> Result<Figures, String> {
        let (_, addr) = &self.nodes[node];
        let response = self
            .client
            .get(format!("http://{addr}/v1/skus/{sku}"))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {body}"));
        }
        let field = |name: &str| body.get(name).and_then(Value::as_i64).unwrap_or(-1);
        Ok(Figures {
            sku: sku.to_owned(),
            on_hand: field("on_hand"),
            held: field("held"),
            sold: field("sold"),
            per_customer_limit: field("per_customer_limit"),
        })
    }

    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|(name, _)| name.clone()).collect()
    }
}

fn unknown(error: String) -> Completion {
    Completion {
        kind: Kind::Info,
        status: None,
        code: None,
        answer: None,
        replayed: false,
        error: Some(error),
    }
}

/// Main SKUs for a run: small stock, short TTLs, mixed limits.
pub fn main_skus(rng: &mut StdRng) -> Vec<SkuSpec> {
    ["sku-a", "sku-b", "sku-c"]
        .iter()
        .enumerate()
        .map(|(i, name)| SkuSpec {
            sku: (*name).to_owned(),
            on_hand: rng.random_range(3..=10),
            // The first SKU always has a limit, so limits are contended.
            per_customer_limit: if i == 0 {
                rng.random_range(1..=2)
            } else {
                rng.random_range(0..=3)
            },
            hold_ttl_ms: rng.random_range(2000..=3000),
            max_extensions: 1,
            probe: false,
        })
        .collect()
}

/// A storefront client: admit, then confirm, release, extend, replay or
/// abandon, until `stop`.
pub async fn storefront(
    shared: Arc<Shared>,
    id: usize,
    mut rng: StdRng,
    stop: watch::Receiver<bool>,
) {
    let process = format!("c{id}");
    let mut n = 0;
    while !*stop.borrow() {
        n += 1;
        let spec = &shared.main[rng.random_range(0..shared.main.len())];
        let customer = format!("cust-{}", rng.random_range(0..shared.customers));
        let quantity = if rng.random_bool(0.8) { 1 } else { 2 };
        let key = format!("{process}-{n}");
        let admitted = shared
            .admit(&process, &spec.sku, &key, &customer, quantity, &mut rng)
            .await;
        let Some(hold) = admitted.hold_id().filter(|_| admitted.kind == Kind::Ok) else {
            think(&mut rng, 20, 300).await;
            continue;
        };
        if *stop.borrow() {
            break;
        }
        // Mostly within the TTL; sometimes just past it.
        let ttl = spec.hold_ttl_ms as u64;
        let delay = |rng: &mut StdRng| {
            if rng.random_bool(0.1) {
                rng.random_range(ttl..ttl + 800)
            } else {
                rng.random_range(0..ttl * 2 / 3)
            }
        };
        let roll = rng.random_range(0..100);
        let pause = delay(&mut rng);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let sku = spec.sku.as_str();
        match roll {
            0..45 => {
                shared
                    .on_hold(F::Confirm, &process, sku, &hold, None, &mut rng)
                    .await;
            }
            45..60 => {
                shared
                    .on_hold(F::Release, &process, sku, &hold, None, &mut rng)
                    .await;
            }
            60..72 => {
                shared
                    .on_hold(F::Extend, &process, sku, &hold, None, &mut rng)
                    .await;
                let pause = delay(&mut rng);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                shared
                    .on_hold(F::Confirm, &process, sku, &hold, None, &mut rng)
                    .await;
            }
            72..78 => {
                // The client lost the answer and asks again: same hold.
                shared
                    .admit(&process, sku, &key, &customer, quantity, &mut rng)
                    .await;
                shared
                    .on_hold(F::Confirm, &process, sku, &hold, None, &mut rng)
                    .await;
            }
            _ => {} // abandoned: it expires
        }
        if rng.random_bool(0.15) {
            shared
                .on_hold(F::GetHold, &process, sku, &hold, None, &mut rng)
                .await;
        }
        think(&mut rng, 0, 200).await;
    }
}

async fn think(rng: &mut StdRng, from_ms: u64, to_ms: u64) {
    tokio::time::sleep(Duration::from_millis(rng.random_range(from_ms..=to_ms))).await;
}

/// The admin: adjusts stock (with an Idempotency-Key) and now and then
/// replaces it with a PUT.
pub async fn admin(shared: Arc<Shared>, mut rng: StdRng, stop: watch::Receiver<bool>) {
    let mut n = 0;
    let mut on_hand: Vec<i64> = shared.main.iter().map(|s| s.on_hand).collect();
    while !*stop.borrow() {
        think(&mut rng, 500, 1800).await;
        if *stop.borrow() {
            break;
        }
        let i = rng.random_range(0..shared.main.len());
        let spec = &shared.main[i];
        if rng.random_bool(0.75) {
            n += 1;
            let key = format!("adj-{n}");
            // Drift back towards the starting stock.
            let delta = if on_hand[i] > spec.on_hand * 2 {
                -rng.random_range(1..=2)
            } else {
                *[-2, -1, 1, 2, 3].get(rng.random_range(0..5)).unwrap_or(&1)
            };
            let answer = shared.adjust(&spec.sku, &key, delta, &mut rng).await;
            if let Some(value) = answer.on_hand() {
                on_hand[i] = value;
            }
        } else {
            let target = (on_hand[i] + rng.random_range(-1..=2)).max(1);
            let answer = shared.put_sku("admin", spec, target, &mut rng).await;
            if let Some(value) = answer.on_hand() {
                on_hand[i] = value;
            }
        }
    }
}

/// The probe lane: one window after another, each on a fresh SKU with a
/// long TTL, a few clients and a few dozen ops, then its holds released.
pub async fn probes(shared: Arc<Shared>, mut rng: StdRng, stop: watch::Receiver<bool>) {
    let mut window = 0;
    while !*stop.borrow() {
        window += 1;
        let spec = SkuSpec {
            sku: format!("lin-{window}"),
            on_hand: rng.random_range(1..=3),
            per_customer_limit: rng.random_range(0..=2),
            hold_ttl_ms: PROBE_TTL_MS,
            max_extensions: 1,
            probe: true,
        };
        let created = shared.put_sku("probe", &spec, spec.on_hand, &mut rng).await;
        if let Ok(mut specs) = shared.specs.lock() {
            specs.push(spec.clone());
        }
        if created.kind != Kind::Ok {
            think(&mut rng, 200, 500).await;
            continue;
        }
        let mut clients = Vec::new();
        for c in 0..PROBE_CLIENTS {
            let shared = shared.clone();
            let sku = spec.sku.clone();
            let rng = StdRng::seed_from_u64(rng.random());
            clients.push(tokio::spawn(probe_client(shared, sku, window, c, rng)));
        }
        let mut holds: Vec<(String, String)> = Vec::new();
        for client in clients {
            if let Ok(got) = client.await {
                holds.extend(got);
            }
        }
        // Release what the window holds, so the next one starts clean and
        // nothing waits a minute to expire.
        for (hold, key) in holds {
            shared
                .on_hold(F::Release, "probe", &spec.sku, &hold, Some(&key), &mut rng)
                .await;
        }
        think(&mut rng, 0, 200).await;
    }
}

/// One client of a probe window; returns the holds it was answered, with
/// their keys.
async fn probe_client(
    shared: Arc<Shared>,
    sku: String,
    window: usize,
    client: usize,
    mut rng: StdRng,
) -> Vec<(String, String)> {
    let process = format!("p{window}.{client}");
    let mut keys: Vec<(String, String, i64)> = Vec::new();
    let mut holds: Vec<(String, String)> = Vec::new();
    for _ in 0..rng.random_range(4..=8) {
        let roll = rng.random_range(0..100);
        if holds.is_empty() || roll < 40 {
            let key = format!("{process}-{}", keys.len() + 1);
            let customer = format!("pc-{}", rng.random_range(0..PROBE_CUSTOMERS));
            let quantity = if rng.random_bool(0.8) { 1 } else { 2 };
            let answer = shared
                .admit(&process, &sku, &key, &customer, quantity, &mut rng)
                .await;
            if let (Kind::Ok, Some(hold)) = (answer.kind, answer.hold_id()) {
                holds.push((hold, key.clone()));
            }
            keys.push((key, customer, quantity));
        } else if roll < 50 && !keys.is_empty() {
            let (key, customer, quantity) = keys[rng.random_range(0..keys.len())].clone();
            let answer = shared
                .admit(&process, &sku, &key, &customer, quantity, &mut rng)
                .await;
            if let (Kind::Ok, Some(hold)) = (answer.kind, answer.hold_id())
                && !holds.iter().any(|(h, _)| *h == hold)
            {
                holds.push((hold, key));
            }
        } else {
            let (hold, _) = holds[rng.random_range(0..holds.len())].clone();
            let f = match roll {
                50..65 => F::Confirm,
                65..80 => F::Release,
                80..90 => F::Extend,
                _ => F::GetHold,
            };
            shared
                .on_hold(f, &process, &sku, &hold, None, &mut rng)
                .await;
        }
        think(&mut rng, 0, 30).await;
    }
    holds
}

/// Releases probe holds still held in the ledger: admissions whose answer
/// no client saw. Returns how many it asked to release.
pub async fn sweep(shared: &Shared, pool: &sqlx::PgPool, rng: &mut StdRng) -> usize {
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT hold_id::text, sku, idempotency_key FROM holds
         WHERE state = 'held' AND sku LIKE 'lin-%'",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    for (hold, sku, key) in &rows {
        shared
            .on_hold(F::Release, "sweeper", sku, hold, key.as_deref(), rng)
            .await;
    }
    rows.len()
}

/// Samples the ledger (one consistent snapshot) and one gatekeeper's view
/// of the main SKUs every few hundred ms, until `stop`.
pub async fn sampler(
    shared: Arc<Shared>,
    pool: sqlx::PgPool,
    mut rng: StdRng,
    stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        think(&mut rng, 200, 500).await;
        let time_ns = shared.recorder.now_ns();
        match ledger_sample(&pool).await {
            Ok((skus, customers)) => shared.recorder.sample(Sample {
                time_ns,
                source: "ledger".to_owned(),
                skus,
                customers,
            }),
            Err(error) => eprintln!("nemesis: ledger sample failed: {error}"),
        }
        let node = rng.random_range(0..shared.nodes.len());
        let time_ns = shared.recorder.now_ns();
        let mut skus = Vec::new();
        for spec in &shared.main {
            if let Ok(figures) = shared.gate_figures(node, &spec.sku).await {
                skus.push(figures);
            }
        }
        if !skus.is_empty() {
            shared.recorder.sample(Sample {
                time_ns,
                source: shared.nodes[node].0.clone(),
                skus,
                customers: Vec::new(),
            });
        }
    }
}

/// The ledger's SKUs and units out per customer, in one snapshot.
pub async fn ledger_sample(
    pool: &sqlx::PgPool,
) -> Result<(Vec<Figures>, Vec<CustomerUnits>), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let skus: Vec<(String, i64, i64, i64, i32)> = sqlx::query_as(
        "SELECT sku, on_hand, held, sold, per_customer_limit FROM skus ORDER BY sku",
    )
    .fetch_all(&mut *tx)
    .await?;
    let customers: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT sku, customer_id,
                COALESCE(sum(quantity) FILTER (WHERE state = 'held'), 0)::int8,
                COALESCE(sum(quantity) FILTER (WHERE state = 'confirmed'), 0)::int8
         FROM holds WHERE state IN ('held', 'confirmed')
         GROUP BY sku, customer_id ORDER BY sku, customer_id",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((
        skus.into_iter()
            .map(|(sku, on_hand, held, sold, limit)| Figures {
                sku,
                on_hand,
                held,
                sold,
                per_customer_limit: i64::from(limit),
            })
            .collect(),
        customers
            .into_iter()
            .map(|(sku, customer, held, confirmed)| CustomerUnits {
                sku,
                customer,
                held,
                confirmed,
            })
            .collect(),
    ))
}
