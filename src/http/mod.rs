//! The HTTP API of shared/API.md: one module per resource, one error type.

mod dashboard;
mod error;
mod extract;
mod holds;
mod openapi;
mod ops;
mod skus;

pub use error::ApiError;
pub use extract::Tokens;
pub use holds::Hold;
pub use skus::Sku;

use crate::app::Dropgate;
use crate::limits::RateLimits;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderName;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// Bodies above this are refused with 413.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// No request runs longer than this; it answers 503 instead.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct AppState {
    pub app: Dropgate,
    pub tokens: Arc<Tokens>,
    pub limits: Arc<RateLimits>,
    pub metrics: PrometheusHandle,
    /// Set on SIGTERM: /readyz turns 503 so load balancers stop sending
    /// while in-flight and arriving requests are still served.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .merge(holds::router())
        .merge(skus::router())
        .merge(ops::router())
        .merge(openapi::router())
        .merge(dashboard::router())
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn(time_and_bound))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(CatchPanicLayer::custom(|_| ApiError::Internal.into_response()))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}

/// Bounds every request by REQUEST_TIMEOUT and records its latency.
async fn time_and_bound(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable {
            dependency: "dropgate",
            retry_after_s: 1,
        }
        .into_response(),
    };
    metrics::histogram!(
        "dropgate_http_request_duration_seconds",
        "method" => method.to_string(),
        "route" => route,
        "status" => response.status().as_u16().to_string()
    )
    .record(started.elapsed().as_secs_f64());
    response
}
