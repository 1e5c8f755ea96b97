//! The operator's live dashboard: one page at `/` (assets embedded in the
//! binary, nothing loaded from elsewhere) that polls `GET /v1/dashboard`, a
//! JSON summary of stock per SKU, admissions by outcome, commit lag, backlog,
//! drift and the health of Redis and Postgres. No token, like the other
//! operations endpoints: it reveals only figures.

use super::AppState;
use crate::domain::SkuFigures as Figures;
use crate::domain::{SkuId, Stock};
use crate::gate::Gate;
use crate::ledger::LedgerSku;
use crate::telemetry::metric;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::time::{Duration, Instant};
use utoipa::ToSchema;

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// The page may load only its own script and style, and talk only to us.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// SKUs shown, in id order; the rest are counted but not listed.
pub const MAX_SKUS: usize = 50;

/// How long a health probe may take before its store counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long reading the figures of one store may take.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// Outcomes always present in `admissions_total`, zero until first seen.
const OUTCOMES: [&str; 6] = [
    "held",
    "sold_out",
    "limit_exceeded",
    "rate_limited",
    "replayed",
    "error",
];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(page))
        .route("/dashboard.js", get(script))
        .route("/dashboard.css", get(style))
        .route("/v1/dashboard", get(figures))
}

async fn page() -> Response {
    let mut response = asset("text/html; charset=utf-8", PAGE);
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// The dashboard's figures: stock per SKU from the gate and the ledger,
/// admissions by outcome, commit lag, backlog, drift, store health. A store
/// that does not answer degrades to `unreachable` and null figures.
#[derive(Debug, Serialize, ToSchema)]
pub struct Dashboard {
    /// RFC 3339, UTC.
    pub generated_at: String,
    /// `ok` or `unreachable`.
    #[schema(value_type = String)]
    pub redis: &'static str,
    /// `ok` or `unreachable`.
    #[schema(value_type = String)]
    pub postgres: &'static str,
    /// `built` or `not built`.
    #[schema(value_type = String)]
    pub gate: &'static str,
    /// The first SKUs, in id order.
    pub skus: Vec<SkuFigures>,
    /// More SKUs exist than the `MAX_SKUS` listed.
    pub skus_truncated: bool,
    /// Sum of `backlog` over the listed SKUs; null when Redis is unreachable.
    #[schema(minimum = 0)]
    pub backlog_total: Option<u64>,
    /// Largest absolute drift of any counter of any listed SKU; null unless
    /// both stores answered.
    #[schema(minimum = 0)]
    pub max_abs_drift: Option<i64>,
    /// Admissions by outcome since the process started.
    pub admissions_total: BTreeMap<String, u64>,
    /// Seconds between an event and its commit to the ledger, once any.
    pub commit_lag_seconds: Option<f64>,
}

/// One SKU on the dashboard: the gate's figures, the ledger's, and their
/// difference. A field is null when its store is unreachable or does not
/// have the SKU.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DashboardSku)]
pub struct SkuFigures {
    #[schema(value_type = String)]
    pub sku: SkuId,
    pub on_hand: Option<i64>,
    pub available: Option<i64>,
    pub held: Option<i64>,
    pub sold: Option<i64>,
    pub ledger_on_hand: Option<i64>,
    pub ledger_held: Option<i64>,
    pub ledger_sold: Option<i64>,
    /// Gate minus ledger, as visible now (the worker may be behind).
    pub drift: Option<Drift>,
    /// Events in the SKU's stream not yet committed or trimmed.
    pub backlog: Option<u64>,
}

/// Gate minus ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[schema(as = DashboardDrift)]
pub struct Drift {
    pub on_hand: i64,
    pub held: i64,
    pub sold: i64,
}

impl Drift {
    fn max_abs(&self) -> i64 {
        self.on_hand.abs().max(self.held.abs()).max(self.sold.abs())
    }
}

/// The dashboard's figures, computed at most once per interval and shared
/// by every viewer: each computation costs dozens of Redis commands, a few
/// queries and a metrics render, so a crowd of viewers (or one flood of
/// unauthenticated requests) must not multiply that cost.
pub struct DashboardCache {
    /// How long one computation is served; zero computes for every request.
    interval: Duration,
    /// The last answer and when it was ready. Viewers arriving while it is
    /// being computed wait on the lock for that one computation.
    last: tokio::sync::Mutex<Option<(Instant, Bytes)>>,
}

impl DashboardCache {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: tokio::sync::Mutex::new(None),
        }
    }

    async fn get(&self, state: &AppState) -> Bytes {
        let mut last = self.last.lock().await;
        if let Some((ready_at, body)) = last.as_ref()
            && ready_at.elapsed() < self.interval
        {
            return body.clone();
        }
        metrics::counter!(crate::telemetry::metric::DASHBOARD_COMPUTATIONS_TOTAL).increment(1);
        let body = Bytes::from(serde_json::to_vec(&collect(state).await).unwrap_or_default());
        *last = Some((Instant::now(), body.clone()));
        body
    }
}

async fn figures(State(state): State<AppState>) -> Response {
    let body = state.dashboard.get(&state).await;
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// `Some` when `future` finished in time without error.
async fn bounded<T, E>(limit: Duration, future: impl Future<Output = Result<T, E>>) -> Option<T> {
    tokio::time::timeout(limit, future).await.ok()?.ok()
}

/// Gathers the dashboard. Every store failure degrades to "unreachable".
pub async fn collect(state: &AppState) -> Dashboard {
    let app = &state.app;
    let (epoch, ping) = tokio::join!(
        bounded(PROBE_TIMEOUT, app.gate.epoch()),
        bounded(PROBE_TIMEOUT, app.ledger.ping()),
    );
    let gate_built = matches!(epoch, Some(Some(_)));
    let (gate_names, ledger_rows) = tokio::join!(
        async {
            match epoch {
                Some(_) => bounded(READ_TIMEOUT, app.gate.skus()).await,
                None => None,
            }
        },
        async {
            match ping {
                Some(()) => bounded(READ_TIMEOUT, app.ledger.skus(None, MAX_SKUS as i64 + 1)).await,
                None => None,
            }
        },
    );

    // The first MAX_SKUS ids known to either store. A SKU among them that
    // the ledger has is within the ledger's first MAX_SKUS + 1 rows.
    let mut names: BTreeSet<SkuId> = BTreeSet::new();
    names.extend(gate_names.iter().flatten().cloned());
    names.extend(ledger_rows.iter().flatten().map(|row| row.sku.clone()));
    let skus_truncated = names.len() > MAX_SKUS;
    let names: Vec<SkuId> = names.into_iter().take(MAX_SKUS).collect();

    let gate_figures = match gate_names {
        Some(_) => bounded(READ_TIMEOUT, read_gate(&app.gate, &names)).await,
        None => None,
    };
    let ledger: HashMap<&SkuId, &LedgerSku> = ledger_rows
        .iter()
        .flatten()
        .map(|row| (&row.sku, row))
        .collect();

    let redis_ok = gate_figures.is_some();
    let postgres_ok = ledger_rows.is_some();
    let skus: Vec<SkuFigures> = names
        .iter()
        .enumerate()
        .map(|(i, sku)| {
            let (gate, backlog) = gate_figures
                .as_ref()
                .map_or((None, None), |(figures, lengths)| {
                    (figures[i], lengths.get(i).copied())
                });
            sku_figures(
                sku,
                gate.map(|g| g.stock),
                ledger.get(sku).map(|l| l.figures.stock),
                backlog,
            )
        })
        .collect();

    let mut admissions_total: BTreeMap<String, u64> =
        OUTCOMES.iter().map(|o| ((*o).to_owned(), 0)).collect();
    admissions_total.extend(
        state
            .metrics
            .counter_by(metric::ADMISSIONS_TOTAL, "outcome"),
    );

    Dashboard {
        generated_at: now_rfc3339(),
        redis: if redis_ok { "ok" } else { "unreachable" },
        postgres: if postgres_ok { "ok" } else { "unreachable" },
        gate: if gate_built { "built" } else { "not built" },
        skus_truncated,
        backlog_total: redis_ok.then(|| skus.iter().filter_map(|s| s.backlog).sum()),
        max_abs_drift: (redis_ok && postgres_ok).then(|| {
            skus.iter()
                .filter_map(|s| s.drift.map(|d| d.max_abs()))
                .max()
                .unwrap_or(0)
        }),
        skus,
        admissions_total,
        commit_lag_seconds: state
            .metrics
            .gauge(metric::COMMIT_LAG_SECONDS, &[])
            .filter(|lag| lag.is_finite()),
    }
}

/// The gate's figures and the stream length of each SKU, in `names` order.
async fn read_gate(
    gate: &Gate,
    names: &[SkuId],
) -> Result<(Vec<Option<Figures>>, Vec<u64>), crate::gate::GateError> {
    // Concurrent reads share the gate's one pipelined connection.
    let mut reads = tokio::task::JoinSet::new();
    for (i, sku) in names.iter().enumerate() {
        let (gate, sku) = (gate.clone(), sku.clone());
        reads.spawn(async move { (i, gate.sku(&sku).await) });
    }
    let lengths = gate.backlogs(names).await?;
    let mut figures = vec![None; names.len()];
    while let Some(joined) = reads.join_next().await {
        let (i, read) =
            joined.map_err(|e| crate::gate::GateError::Protocol(format!("gate read task: {e}")))?;
        figures[i] = read?;
    }
    Ok((figures, lengths))
}

/// Stock counters of one store.
fn sku_figures(
    sku: &SkuId,
    gate: Option<Stock>,
    ledger: Option<Stock>,
    backlog: Option<u64>,
) -> SkuFigures {
    let drift = gate.zip(ledger).map(|(g, l)| {
        let d = g.drift(l);
        Drift {
            on_hand: d.on_hand,
            held: d.held,
            sold: d.sold,
        }
    });
    SkuFigures {
        sku: sku.clone(),
        on_hand: gate.map(|g| g.on_hand),
        available: gate.map(Stock::available),
        held: gate.map(|g| g.held),
        sold: gate.map(|g| g.sold),
        ledger_on_hand: ledger.map(|l| l.on_hand),
        ledger_held: ledger.map(|l| l.held),
        ledger_sold: ledger.map(|l| l.sold),
        drift,
        backlog,
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_is_gate_minus_ledger() {
        let sku = SkuId::parse("drop-1").unwrap();
        let gate = Stock {
            on_hand: 20,
            held: 3,
            sold: 2,
        };
        let ledger = Stock {
            on_hand: 20,
            held: 1,
            sold: 2,
        };
        let row = sku_figures(&sku, Some(gate), Some(ledger), Some(4));
        assert_eq!(row.available, Some(15));
        assert_eq!(
            row.drift,
            Some(Drift {
                on_hand: 0,
                held: 2,
                sold: 0
            })
        );
        let gate_only = sku_figures(&sku, Some(gate), None, None);
        assert_eq!(gate_only.drift, None);
        assert_eq!(gate_only.ledger_held, None);
    }
}
