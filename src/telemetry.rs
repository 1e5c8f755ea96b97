//! Logs (tracing) and metrics (the `metrics` facade, exposed as Prometheus
//! text). Every metric name lives in [`metric`].
//!
//! Code anywhere in the crate records with the facade's macros
//! (`metrics::counter!(metric::ADMISSIONS_TOTAL, ..)`). What it records lands
//! in the [`Metrics`] of the application doing the work: an application owns
//! one, renders `/metrics` from it, reads the dashboard's figures from it as
//! numbers, and runs its requests and background services inside
//! [`Metrics::scope`]. So several applications in one process (the tests)
//! keep their figures apart, and a test can assert exact values. Whatever is
//! recorded outside any scope lands in [`Metrics::process`].

use crate::domain::SkuId;
use metrics::atomics::AtomicU64;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};
use metrics_util::registry::{Registry, Storage};
use std::collections::BTreeMap;
use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Once, OnceLock};
use std::sync::{LazyLock, RwLock};
use tracing_subscriber::EnvFilter;

/// Installs the log subscriber once; later calls are no-ops (tests).
/// `RUST_LOG` overrides the default filter.
pub fn init_logs(json: bool) {
    init_logs_with("info,sqlx=warn", json);
}

pub fn init_logs_with(default_filter: &str, json: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Every metric dropgate records. A new metric is one line here and its use.
pub mod metric {
    /// Counter, by `outcome`: admission requests answered.
    pub const ADMISSIONS_TOTAL: &str = "dropgate_admissions_total";
    /// Counter, by `sku` and `outcome`: the same per SKU (`other` for unknown ids).
    pub const ADMISSIONS_BY_SKU_TOTAL: &str = "dropgate_admissions_by_sku_total";
    /// Histogram: one admission request, validation to answer.
    pub const ADMISSION_DURATION_SECONDS: &str = "dropgate_admission_duration_seconds";
    /// Histogram, by `method`, `route` and `status`: every HTTP request.
    pub const HTTP_REQUEST_DURATION_SECONDS: &str = "dropgate_http_request_duration_seconds";
    /// Histogram, by `script`: one gate script call, round trip included.
    pub const REDIS_SCRIPT_DURATION_SECONDS: &str = "dropgate_redis_script_duration_seconds";
    /// Histogram: admissions per admission script call (1 when alone).
    pub const ADMIT_BATCH_SIZE: &str = "dropgate_admit_batch_size";
    /// Counter: admissions of a SKU known sold out, answered without a
    /// script call: `sold_out`, or the key's replay (see `gate::sold_out`).
    pub const ADMISSIONS_AT_EDGE_TOTAL: &str = "dropgate_admissions_at_edge_total";
    /// Counter: admissions answered before enough replicas acknowledged them.
    pub const REDIS_WAIT_SHORT_TOTAL: &str = "dropgate_redis_wait_short_total";
    /// Counter: holds the reaper expired in the gate.
    pub const HOLDS_EXPIRED_TOTAL: &str = "dropgate_holds_expired_total";
    /// Counter: gate rebuilds from the ledger.
    pub const GATE_REBUILDS_TOTAL: &str = "dropgate_gate_rebuilds_total";
    /// Counter: commit worker batches that failed (and were retried).
    pub const WORKER_ERRORS_TOTAL: &str = "dropgate_worker_errors_total";
    /// Histogram: one ledger transaction of the commit worker.
    pub const WORKER_COMMIT_DURATION_SECONDS: &str = "dropgate_worker_commit_duration_seconds";
    /// Histogram: events in one committed batch.
    pub const WORKER_BATCH_EVENTS: &str = "dropgate_worker_batch_events";
    /// Gauge: age of the oldest event of the last committed batch.
    pub const COMMIT_LAG_SECONDS: &str = "dropgate_commit_lag_seconds";
    /// Counter: events the ledger applied (worker or inline confirm).
    pub const LEDGER_EVENTS_APPLIED_TOTAL: &str = "dropgate_ledger_events_applied_total";
    /// Counter: events the ledger already had.
    pub const LEDGER_EVENTS_SKIPPED_TOTAL: &str = "dropgate_ledger_events_skipped_total";
    /// Counter: holds the ledger refused (they would oversell) and marked lost.
    pub const LEDGER_HOLDS_LOST_TOTAL: &str = "dropgate_ledger_holds_lost_total";
    /// Gauge, by `version`: always 1.
    pub const BUILD_INFO: &str = "dropgate_build_info";
    /// Gauge, by `state`: ledger holds, refreshed by the reconciler.
    pub const HOLDS: &str = "dropgate_holds";
    /// Gauge, by `sku`: events in the SKU's stream at the reconciler's fence.
    pub const STREAM_BACKLOG_EVENTS: &str = "dropgate_stream_backlog_events";
    /// Gauge, by `sku` and `counter`: gate minus ledger at the fence.
    pub const RECONCILER_DRIFT_UNITS: &str = "dropgate_reconciler_drift_units";
    /// Counter: drifts the reconciler repaired.
    pub const RECONCILER_REPAIRS_TOTAL: &str = "dropgate_reconciler_repairs_total";
    /// Counter: SKUs the reconciler could not check in a pass (it went on).
    pub const RECONCILER_ERRORS_TOTAL: &str = "dropgate_reconciler_errors_total";
    /// Counter: events the ledger refused on their own, set aside.
    pub const LEDGER_DEAD_LETTERS_TOTAL: &str = "dropgate_ledger_dead_letters_total";
    /// Gauge: dead letters no operator resolved yet.
    pub const LEDGER_DEAD_LETTERS_OPEN: &str = "dropgate_ledger_dead_letters_open";
    /// Gauge: SKUs the gate has events for but the ledger does not know.
    pub const LEDGER_UNKNOWN_SKUS: &str = "dropgate_ledger_unknown_skus";
    /// Counter, by `kind`: Redis replies that mean "unavailable" (out of
    /// memory, read-only, loading, busy, master down, cluster).
    pub const REDIS_ERRORS_TOTAL: &str = "dropgate_redis_errors_total";
    /// Counter: requests answered 503 at once because too many were in flight.
    pub const REQUESTS_SHED_TOTAL: &str = "dropgate_requests_shed_total";
    /// Counter: connections closed for not finishing a request head in time.
    pub const HTTP_SLOW_CONNECTIONS_CLOSED_TOTAL: &str =
        "dropgate_http_slow_connections_closed_total";
    /// Counter: computations of the dashboard's figures (shared by viewers).
    pub const DASHBOARD_COMPUTATIONS_TOTAL: &str = "dropgate_dashboard_computations_total";
    /// Counter: SKUs the ledger has that the built gate lacked, restored.
    pub const GATE_SKUS_RESTORED_TOTAL: &str = "dropgate_gate_skus_restored_total";
    /// Counter: SKUs dropped from a gate built from another ledger.
    pub const GATE_FOREIGN_SKUS_DROPPED_TOTAL: &str = "dropgate_gate_foreign_skus_dropped_total";
}

/// Latency buckets of every `_seconds` histogram.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The metrics of one application: its Prometheus text and the same figures
/// as numbers. Cloning shares them.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Recorded>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Both sides of every metric: Prometheus keeps what `/metrics` renders
/// (buckets included), the figures keep plain numbers a reader can ask for.
struct Recorded {
    prometheus: PrometheusRecorder,
    figures: Registry<Key, Figures>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty metrics, for one application.
    pub fn new() -> Self {
        install_dispatch();
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        Self {
            inner: Arc::new(Recorded {
                prometheus: builder.build_recorder(),
                figures: Registry::new(Figures),
            }),
        }
    }

    /// The process's own metrics: what is recorded outside every
    /// [`scope`](Self::scope). A server's application uses these, so nothing
    /// it records goes astray.
    pub fn process() -> Self {
        static PROCESS: OnceLock<Metrics> = OnceLock::new();
        PROCESS.get_or_init(Metrics::new).clone()
    }

    /// Runs `future` with everything it records landing here. Tasks it
    /// spawns are not covered: scope them too.
    pub fn scope<F: Future>(&self, future: F) -> impl Future<Output = F::Output> + use<F> {
        CURRENT.scope(self.clone(), future)
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        self.inner.prometheus.handle().render()
    }

    /// Sum of the counter `name` over its series that carry `labels`.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let mut total = 0;
        self.inner.figures.visit_counters(|key, value| {
            if matches(key, name, labels) {
                total += value.load(Ordering::Acquire);
            }
        });
        total
    }

    /// The counter `name` summed by the value of its label `label`.
    pub fn counter_by(&self, name: &str, label: &str) -> BTreeMap<String, u64> {
        let mut by = BTreeMap::new();
        self.inner.figures.visit_counters(|key, value| {
            if key.name() != name {
                return;
            }
            if let Some(found) = key.labels().find(|l| l.key() == label) {
                *by.entry(found.value().to_owned()).or_default() += value.load(Ordering::Acquire);
            }
        });
        by
    }

    /// The gauge `name` of the series carrying `labels`; `None` until set.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        self.inner.figures.visit_gauges(|key, value| {
            if found.is_none() && matches(key, name, labels) {
                found = Some(f64::from_bits(value.load(Ordering::Acquire)));
            }
        });
        found
    }

    /// Values recorded into the histogram `name` over its series that carry
    /// `labels`: (how many, their sum).
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> (u64, f64) {
        let (mut count, mut sum) = (0, 0.0);
        self.inner.figures.visit_histograms(|key, tally| {
            if matches(key, name, labels) {
                count += tally.count.load(Ordering::Acquire);
                sum += f64::from_bits(tally.sum.load(Ordering::Acquire));
            }
        });
        (count, sum)
    }
}

fn matches(key: &Key, name: &str, labels: &[(&str, &str)]) -> bool {
    key.name() == name
        && labels
            .iter()
            .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
}

tokio::task_local! {
    /// The metrics of the application whose work this task is doing.
    static CURRENT: Metrics;
}

/// The process-wide recorder the facade's macros call: it hands each
/// recording to the current task's [`Metrics`], or the process's own.
struct Dispatch;

fn install_dispatch() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        if metrics::set_global_recorder(Dispatch).is_err() {
            // Only in an odd embedding: /metrics and the dashboard then
            // stay empty rather than the process failing.
            tracing::warn!("another metrics recorder is installed; dropgate records nothing");
        }
    });
}

/// Spawns `future` as a task whose recordings land where the current
/// task's do (its [`Metrics::scope`], if any).
pub fn spawn_scoped<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match CURRENT.try_with(Metrics::clone) {
        Ok(metrics) => tokio::spawn(metrics.scope(future)),
        Err(_) => tokio::spawn(future),
    }
}

fn current<T>(use_it: impl FnOnce(&Recorded) -> T) -> T {
    match CURRENT.try_with(Metrics::clone) {
        Ok(metrics) => use_it(&metrics.inner),
        Err(_) => use_it(&Metrics::process().inner),
    }
}

impl Recorder for Dispatch {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        current(|r| r.prometheus.describe_counter(key, unit, description));
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        current(|r| r.prometheus.describe_gauge(key, unit, description));
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        current(|r| r.prometheus.describe_histogram(key, unit, description));
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        current(|r| {
            let figure = r.figures.get_or_create_counter(key, Arc::clone);
            Counter::from_arc(Arc::new(Both(
                r.prometheus.register_counter(key, metadata),
                figure,
            )))
        })
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        current(|r| {
            let figure = r.figures.get_or_create_gauge(key, Arc::clone);
            Gauge::from_arc(Arc::new(Both(
                r.prometheus.register_gauge(key, metadata),
                figure,
            )))
        })
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        current(|r| {
            let figure = r.figures.get_or_create_histogram(key, Arc::clone);
            Histogram::from_arc(Arc::new(Both(
                r.prometheus.register_histogram(key, metadata),
                figure,
            )))
        })
    }
}

/// One metric kept on both sides.
struct Both<P, F>(P, F);

impl CounterFn for Both<Counter, Arc<AtomicU64>> {
    fn increment(&self, value: u64) {
        self.0.increment(value);
        CounterFn::increment(&self.1, value);
    }

    fn absolute(&self, value: u64) {
        self.0.absolute(value);
        CounterFn::absolute(&self.1, value);
    }
}

impl GaugeFn for Both<Gauge, Arc<AtomicU64>> {
    fn increment(&self, value: f64) {
        self.0.increment(value);
        GaugeFn::increment(&self.1, value);
    }

    fn decrement(&self, value: f64) {
        self.0.decrement(value);
        GaugeFn::decrement(&self.1, value);
    }

    fn set(&self, value: f64) {
        self.0.set(value);
        GaugeFn::set(&self.1, value);
    }
}

impl HistogramFn for Both<Histogram, Arc<Tally>> {
    fn record(&self, value: f64) {
        self.0.record(value);
        self.1.record(value);
    }
}

/// Storage of the figures: counters and gauges as atomics (a gauge holds
/// its f64's bits), histograms as a count and a sum, so memory stays bounded
/// however long nobody reads them.
struct Figures;

impl Storage<Key> for Figures {
    type Counter = Arc<AtomicU64>;
    type Gauge = Arc<AtomicU64>;
    type Histogram = Arc<Tally>;

    fn counter(&self, _: &Key) -> Self::Counter {
        Arc::default()
    }

    fn gauge(&self, _: &Key) -> Self::Gauge {
        Arc::default()
    }

    fn histogram(&self, _: &Key) -> Self::Histogram {
        Arc::default()
    }
}

/// How many values a histogram recorded, and their sum (f64 bits).
#[derive(Default)]
struct Tally {
    count: AtomicU64,
    sum: AtomicU64,
}

impl HistogramFn for Tally {
    fn record(&self, value: f64) {
        self.count.fetch_add(1, Ordering::AcqRel);
        let _ = self
            .sum
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }
}

/// SKUs that get a `sku` label of their own, at most; the rest share
/// `OTHER_SKUS`, so the number of per-SKU series stays bounded whatever the
/// catalogue's size.
pub const MAX_SKU_LABELS: usize = 100;

/// The `sku` label of every SKU beyond `MAX_SKU_LABELS`.
pub const OTHER_SKUS: &str = "other";

/// The `sku` label for a SKU this process knows to exist (its script
/// answered for it, or the gate lists it): its id for the first
/// `MAX_SKU_LABELS` such SKUs seen, `OTHER_SKUS` after. Callers must not
/// pass ids taken from a request alone, or made-up SKUs would claim labels.
pub fn sku_label(sku: &SkuId) -> String {
    static LABELLED: LazyLock<RwLock<HashSet<SkuId>>> = LazyLock::new(Default::default);
    if LABELLED.read().is_ok_and(|seen| seen.contains(sku)) {
        return sku.as_str().to_owned();
    }
    match LABELLED.write() {
        Ok(mut seen) if seen.contains(sku) || seen.len() < MAX_SKU_LABELS => {
            seen.insert(sku.clone());
            sku.as_str().to_owned()
        }
        _ => OTHER_SKUS.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_scope_keeps_its_figures_apart() {
        let (one, other) = (Metrics::new(), Metrics::new());
        one.scope(async {
            metrics::counter!(metric::ADMISSIONS_TOTAL, "outcome" => "held").increment(2);
            metrics::counter!(metric::ADMISSIONS_TOTAL, "outcome" => "sold_out").increment(1);
            metrics::gauge!(metric::COMMIT_LAG_SECONDS).set(0.25);
            metrics::histogram!(metric::WORKER_BATCH_EVENTS).record(3.0);
            metrics::histogram!(metric::WORKER_BATCH_EVENTS).record(4.0);
        })
        .await;
        other
            .scope(async {
                metrics::counter!(metric::ADMISSIONS_TOTAL, "outcome" => "held").increment(7);
            })
            .await;

        assert_eq!(one.counter(metric::ADMISSIONS_TOTAL, &[]), 3);
        assert_eq!(
            one.counter(metric::ADMISSIONS_TOTAL, &[("outcome", "held")]),
            2
        );
        assert_eq!(
            one.counter_by(metric::ADMISSIONS_TOTAL, "outcome"),
            BTreeMap::from([("held".to_owned(), 2), ("sold_out".to_owned(), 1)])
        );
        assert_eq!(one.gauge(metric::COMMIT_LAG_SECONDS, &[]), Some(0.25));
        assert_eq!(one.histogram(metric::WORKER_BATCH_EVENTS, &[]), (2, 7.0));
        assert_eq!(
            other.counter(metric::ADMISSIONS_TOTAL, &[("outcome", "held")]),
            7
        );
        assert_eq!(other.gauge(metric::COMMIT_LAG_SECONDS, &[]), None);
        assert_eq!(other.histogram(metric::WORKER_BATCH_EVENTS, &[]), (0, 0.0));
    }

    #[tokio::test]
    async fn the_prometheus_text_shows_the_same_figures() {
        let metrics = Metrics::new();
        metrics
            .scope(async {
                metrics::counter!(metric::GATE_REBUILDS_TOTAL).increment(1);
                metrics::gauge!(metric::HOLDS, "state" => "held").set(4.0);
            })
            .await;
        let text = metrics.render();
        assert!(
            text.lines().any(|l| l == "dropgate_gate_rebuilds_total 1"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l == r#"dropgate_holds{state="held"} 4"#),
            "{text}"
        );
        assert_eq!(
            metrics.gauge(metric::HOLDS, &[("state", "held")]),
            Some(4.0)
        );
        assert_eq!(metrics.gauge(metric::HOLDS, &[("state", "expired")]), None);
    }

    #[tokio::test]
    async fn a_spawned_task_needs_its_own_scope() {
        let metrics = Metrics::new();
        metrics
            .scope(async {
                let inner = metrics.clone();
                tokio::spawn(inner.scope(async {
                    metrics::counter!(metric::WORKER_ERRORS_TOTAL).increment(1);
                }))
                .await
                .unwrap();
                // Unscoped: the process's metrics, not these.
                tokio::spawn(async {
                    metrics::counter!(metric::WORKER_ERRORS_TOTAL).increment(1);
                })
                .await
                .unwrap();
            })
            .await;
        assert_eq!(metrics.counter(metric::WORKER_ERRORS_TOTAL, &[]), 1);
    }
}
