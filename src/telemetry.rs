//! Logs (tracing) and metrics (Prometheus text via the `metrics` facade).

use crate::domain::SkuId;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::collections::HashSet;
use std::sync::{LazyLock, OnceLock, RwLock};
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

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics() -> PrometheusHandle {
    METRICS
        .get_or_init(|| {
            let latency = [
                0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                5.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is installed (only in odd embeddings): keep
                // a private one so /metrics still answers.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
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
