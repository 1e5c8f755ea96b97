//! Operations endpoints: liveness, readiness, metrics. No token; bind the
//! server to a private address.

use super::AppState;
use crate::gate::Trouble;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

/// Liveness and readiness: on the public listener too, for load balancers.
pub fn probes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// `/metrics`: on the operations listener when there is one.
pub fn metrics_router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// The body of `GET /healthz`.
#[derive(Serialize, ToSchema)]
pub(super) struct Health {
    #[schema(value_type = String, example = "ok")]
    status: &'static str,
}

/// Liveness: 200 while the process runs.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    responses((status = 200, description = "The process runs", body = Health))
)]
pub(super) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The body of `GET /readyz`.
#[derive(Serialize, ToSchema)]
pub(super) struct Readiness {
    /// `ready` or `not ready`.
    #[schema(value_type = String, example = "ready")]
    status: &'static str,
    /// `ok`, `unreachable`, or what a reachable Redis said it cannot do
    /// now: `out of memory`, `read-only (a replica)`, `replica without its
    /// primary`, `loading its dataset`, `busy running a script`, `cluster
    /// unavailable`.
    #[schema(value_type = String, example = "ok")]
    redis: &'static str,
    /// `ok` or `unreachable`.
    #[schema(value_type = String, example = "ok")]
    postgres: &'static str,
    /// `built`, or `not built` while the gate is rebuilt from the ledger.
    #[schema(value_type = String, example = "built")]
    gate: &'static str,
    /// What is missing; empty when ready.
    #[schema(value_type = Vec<String>)]
    missing: Vec<&'static str>,
    /// SKUs the gate has events for but the ledger does not know (their
    /// events wait in the stream); absent when there are none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    unknown_skus: Vec<crate::domain::SkuId>,
}

/// Readiness: 200 when Redis and Postgres answer and the gate is built.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready: `missing` says which dependency", body = Readiness),
    )
)]
pub(super) async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (redis, postgres) = tokio::join!(state.app.gate.probe(), state.app.ledger.ping());
    let redis_ok = redis.is_ok();
    let trouble = redis.as_ref().err().and_then(|e| e.trouble());
    let gate_built = matches!(redis, Ok(Some(_)));
    let postgres_ok = postgres.is_ok();
    let mut missing = Vec::new();
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        missing.push("dropgate (shutting down)");
    }
    if let Some(trouble) = trouble {
        missing.push(match trouble {
            Trouble::OutOfMemory => "redis (out of memory)",
            Trouble::ReadOnly => "redis (read-only: a replica)",
            Trouble::MasterDown => "redis (replica without its primary)",
            Trouble::Loading => "redis (loading its dataset)",
            Trouble::Busy => "redis (busy running a script)",
            Trouble::Cluster => "redis (cluster unavailable)",
        });
    } else if !redis_ok {
        missing.push("redis");
    } else if !gate_built {
        missing.push("gate (rebuilding from the ledger)");
    }
    if !postgres_ok {
        missing.push("postgres");
    }
    let unknown_skus = state.app.unknown_skus();
    if !unknown_skus.is_empty() {
        missing.push("ledger (it does not know SKUs the gate has events for)");
    }
    let status = if missing.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        status: if missing.is_empty() {
            "ready"
        } else {
            "not ready"
        },
        redis: match (redis_ok, trouble) {
            (true, _) => "ok",
            (false, Some(trouble)) => trouble.describe(),
            (false, None) => "unreachable",
        },
        postgres: if postgres_ok { "ok" } else { "unreachable" },
        gate: if gate_built { "built" } else { "not built" },
        missing,
        unknown_skus,
    };
    (status, Json(body))
}

/// Prometheus text exposition.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"))
)]
pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
