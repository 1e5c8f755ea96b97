//! The operator's live dashboard: one page at `/` (assets embedded in the
//! binary, nothing loaded from elsewhere) that polls `GET /v1/dashboard`, a
//! JSON summary of stock per SKU, admissions by outcome, commit lag, backlog,
//! drift and the health of Redis and Postgres. No token, like the other
//! operations endpoints: it reveals only figures.

use super::AppState;
use crate::domain::SkuFigures as Figures;
use crate::domain::SkuId;
use crate::gate::Gate;
use crate::ledger::LedgerSku;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::time::Duration;

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

/// The body of `GET /v1/dashboard`.
#[derive(Debug, Serialize)]
pub struct Dashboard {
    pub generated_at: String,
    pub redis: &'static str,
    pub postgres: &'static str,
    pub gate: &'static str,
    pub skus: Vec<SkuFigures>,
    /// More SKUs exist than the `MAX_SKUS` listed.
    pub skus_truncated: bool,
    /// Sum of `backlog` over the listed SKUs; null when Redis is unreachable.
    pub backlog_total: Option<u64>,
    /// Largest absolute drift of any counter of any listed SKU; null unless
    /// both stores answered.
    pub max_abs_drift: Option<i64>,
    pub admissions_total: BTreeMap<String, u64>,
    pub commit_lag_seconds: Option<f64>,
}

/// One SKU: the gate's figures, the ledger's, and their difference. A field
/// is null when its store is unreachable or does not have the SKU.
#[derive(Debug, Serialize)]
pub struct SkuFigures {
    pub sku: SkuId,
    pub on_hand: Option<i64>,
    pub available: Option<i64>,
    pub held: Option<i64>,
    pub sold: Option<i64>,
    pub ledger_on_hand: Option<i64>,
    pub ledger_held: Option<i64>,
    pub ledger_sold: Option<i64>,
    /// Gate minus ledger, as currently visible (the worker may be behind).
    pub drift: Option<Drift>,
    /// Events in the SKU's stream (XLEN): not yet committed or not yet trimmed.
    pub backlog: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

async fn figures(State(state): State<AppState>) -> Response {
    let mut body = Json(collect(&state).await).into_response();
    body.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    body
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
                gate.map(Counts::from),
                ledger.get(sku).map(|l| Counts::from(*l)),
                backlog,
            )
        })
        .collect();

    let metrics = parse_metrics(&state.metrics.render());
    let mut admissions_total: BTreeMap<String, u64> =
        OUTCOMES.iter().map(|o| ((*o).to_owned(), 0)).collect();
    admissions_total.extend(metrics.admissions);

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
        commit_lag_seconds: metrics.commit_lag_seconds,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    on_hand: i64,
    held: i64,
    sold: i64,
}

impl From<Figures> for Counts {
    fn from(g: Figures) -> Self {
        Self {
            on_hand: g.stock.on_hand,
            held: g.stock.held,
            sold: g.stock.sold,
        }
    }
}

impl From<&LedgerSku> for Counts {
    fn from(l: &LedgerSku) -> Self {
        Self {
            on_hand: l.figures.stock.on_hand,
            held: l.figures.stock.held,
            sold: l.figures.stock.sold,
        }
    }
}

fn sku_figures(
    sku: &SkuId,
    gate: Option<Counts>,
    ledger: Option<Counts>,
    backlog: Option<u64>,
) -> SkuFigures {
    let drift = gate.zip(ledger).map(|(g, l)| Drift {
        on_hand: g.on_hand - l.on_hand,
        held: g.held - l.held,
        sold: g.sold - l.sold,
    });
    SkuFigures {
        sku: sku.clone(),
        on_hand: gate.map(|g| g.on_hand),
        available: gate.map(|g| g.on_hand - g.held - g.sold),
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

/// The figures the dashboard takes from the Prometheus text exposition.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MetricFigures {
    /// `dropgate_admissions_total` by its `outcome` label.
    pub admissions: BTreeMap<String, u64>,
    /// `dropgate_commit_lag_seconds`, if the worker has committed anything.
    pub commit_lag_seconds: Option<f64>,
}

/// Reads admissions by outcome and the commit lag from Prometheus text.
/// Lines it does not understand are skipped.
pub fn parse_metrics(text: &str) -> MetricFigures {
    let mut figures = MetricFigures::default();
    for line in text.lines() {
        let Some((name, labels, value)) = parse_sample(line) else {
            continue;
        };
        match name {
            "dropgate_admissions_total" => {
                let outcome = labels.iter().find(|(k, _)| k == "outcome");
                if let Some((_, outcome)) = outcome {
                    if value.is_finite() && value >= 0.0 {
                        *figures.admissions.entry(outcome.clone()).or_default() += value as u64;
                    }
                }
            }
            "dropgate_commit_lag_seconds" if value.is_finite() => {
                figures.commit_lag_seconds = Some(value);
            }
            _ => {}
        }
    }
    figures
}

/// A sample's labels, in order: (name, value).
type Labels = Vec<(String, String)>;

/// One sample line: `name{label="value",...} number [timestamp]`.
fn parse_sample(line: &str) -> Option<(&str, Labels, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    (!name.is_empty()).then_some((name, labels, value))
}

/// Parses `k="v",k2="v2"}` (after the `{`); returns the labels and the rest.
fn parse_labels(mut s: &str) -> Option<(Labels, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_owned();
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key, value));
        s = &s[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"# TYPE dropgate_admissions_total counter
dropgate_admissions_total{outcome="held"} 5
dropgate_admissions_total{outcome="sold_out"} 12
dropgate_admissions_total{instance="a b",outcome="rate_limited"} 3 1700000000000
dropgate_admissions_total{outcome="we\"ird\\"} 1

# TYPE dropgate_commit_lag_seconds gauge
dropgate_commit_lag_seconds 0.042
# TYPE dropgate_admission_duration_seconds summary
dropgate_admission_duration_seconds{quantile="0.5"} 0.001
dropgate_admission_duration_seconds_sum 0.5
dropgate_admissions_total_other{outcome="held"} 99
garbage line {
"#;

    #[test]
    fn reads_admissions_by_outcome() {
        let figures = parse_metrics(SAMPLE);
        assert_eq!(figures.admissions.get("held"), Some(&5));
        assert_eq!(figures.admissions.get("sold_out"), Some(&12));
        assert_eq!(figures.admissions.get("rate_limited"), Some(&3));
        assert_eq!(figures.admissions.get("we\"ird\\"), Some(&1));
        assert_eq!(figures.admissions.len(), 4);
    }

    #[test]
    fn reads_commit_lag() {
        assert_eq!(parse_metrics(SAMPLE).commit_lag_seconds, Some(0.042));
    }

    #[test]
    fn empty_text_has_nothing() {
        let figures = parse_metrics("");
        assert!(figures.admissions.is_empty());
        assert_eq!(figures.commit_lag_seconds, None);
    }

    #[test]
    fn skips_malformed_lines() {
        let text = "dropgate_admissions_total{outcome=\"held\" 5\n\
                    dropgate_admissions_total{outcome=\"held\"} five\n\
                    dropgate_commit_lag_seconds\n\
                    dropgate_commit_lag_seconds NaN\n\
                    dropgate_admissions_total{outcome=\"error\"} 2\n";
        let figures = parse_metrics(text);
        assert_eq!(
            figures.admissions,
            BTreeMap::from([("error".to_owned(), 2)])
        );
        assert_eq!(figures.commit_lag_seconds, None);
    }

    #[test]
    fn drift_is_gate_minus_ledger() {
        let sku = SkuId::parse("drop-1").unwrap();
        let gate = Counts {
            on_hand: 20,
            held: 3,
            sold: 2,
        };
        let ledger = Counts {
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
