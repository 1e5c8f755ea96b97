//! Operations endpoints: liveness, readiness, metrics. No token; bind the
//! server to a private address.

use super::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// 200 when Redis and Postgres answer and the gate is built.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (redis, postgres) = tokio::join!(state.app.gate.epoch(), state.app.ledger.ping());
    let redis_ok = redis.is_ok();
    let gate_built = matches!(redis, Ok(Some(_)));
    let postgres_ok = postgres.is_ok();
    let mut missing = Vec::new();
    if !redis_ok {
        missing.push("redis");
    } else if !gate_built {
        missing.push("gate (rebuilding from the ledger)");
    }
    if !postgres_ok {
        missing.push("postgres");
    }
    let status = if missing.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if missing.is_empty() { "ready" } else { "not ready" },
        "redis": if redis_ok { "ok" } else { "unreachable" },
        "postgres": if postgres_ok { "ok" } else { "unreachable" },
        "gate": if gate_built { "built" } else { "not built" },
        "missing": missing,
    });
    (status, Json(body))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
