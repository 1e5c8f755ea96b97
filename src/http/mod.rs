//! The HTTP API of shared/API.md: one module per resource, one error type.

mod dashboard;
mod error;
mod extract;
mod holds;
mod openapi;
mod ops;
mod server;
mod skus;

pub use dashboard::DashboardCache;
pub use error::ApiError;
pub use extract::Tokens;
pub use holds::Hold;
pub use server::{ConnectionLimits, DESCRIPTOR_RESERVE, connection_cap, descriptor_limit, serve};
pub use skus::Sku;

use crate::app::Dropgate;
use crate::limits::RateLimits;
use crate::telemetry::Metrics;
use crate::telemetry::metric;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderName;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// Bodies above this are refused with 413.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The dashboard JSON's deadline: its own probe and read timeouts fit in it.
const DASHBOARD_DEADLINE: Duration = Duration::from_secs(10);

/// Request targets (path and query) above this are refused with 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// Header fields above this many, or this many bytes (names and values),
/// are refused with 431. hyper's own, higher limits answer without a body;
/// these answer problem+json first.
pub const MAX_HEADER_COUNT: usize = 100;
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// A caller's `x-request-id` is kept only when it is this short and made of
/// `[A-Za-z0-9._-]`; otherwise it is replaced, so log lines cannot be forged
/// or bloated through it.
pub const MAX_REQUEST_ID_CHARS: usize = 64;

#[derive(Clone)]
pub struct AppState {
    pub app: Dropgate,
    pub tokens: Arc<Tokens>,
    pub limits: Arc<RateLimits>,
    /// What this application records; `/metrics` and the dashboard read it.
    pub metrics: Metrics,
    /// Set on SIGTERM: /readyz turns 503 so load balancers stop sending
    /// while in-flight and arriving requests are still served.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    pub requests: Arc<RequestLimits>,
    pub dashboard: Arc<DashboardCache>,
}

/// Bounds of request handling.
#[derive(Debug)]
pub struct RequestLimits {
    /// No request answers later than this (twice the store timeout: one
    /// store call, and the Postgres fallback's after a failed Redis one):
    /// past it, 503 `unavailable`. Work queued in the process (a confirm
    /// waiting for the SKU's ledger flush) counts, so an answer never waits
    /// on the stores much longer than a store call may take.
    pub deadline: Duration,
    /// One permit per request being handled (`DROPGATE_MAX_IN_FLIGHT`). A
    /// request that finds none is answered 503 at once, before it touches a
    /// store: past this many, requests would only queue on the stores'
    /// connections until they time out, and slow down every other one.
    in_flight: tokio::sync::Semaphore,
}

impl RequestLimits {
    pub fn new(deadline: Duration, max_in_flight: usize) -> Self {
        Self {
            deadline,
            in_flight: tokio::sync::Semaphore::new(max_in_flight),
        }
    }
}

/// Paths that never count against the in-flight limit: cheap, and what
/// operators and load balancers need most when the process is overloaded.
const UNLIMITED_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Every endpoint, for one listener (no `DROPGATE_OPS_LISTEN`).
pub fn router(state: AppState) -> Router {
    let routes = api().merge(operations());
    layered(routes, state)
}

/// The public listener's endpoints when the operations endpoints have a
/// listener of their own: the API, its OpenAPI document and the probes a
/// load balancer asks.
pub fn public_router(state: AppState) -> Router {
    layered(api().merge(ops::probes()), state)
}

/// The operations listener (`DROPGATE_OPS_LISTEN`): dashboard, metrics,
/// probes. No token; bind it to a private address.
pub fn ops_router(state: AppState) -> Router {
    layered(operations(), state)
}

fn api() -> Router<AppState> {
    Router::new()
        .merge(holds::router())
        .merge(skus::router())
        .merge(openapi::router())
}

fn operations() -> Router<AppState> {
    Router::new()
        .merge(ops::probes())
        .merge(ops::metrics_router())
        .merge(dashboard::router())
}

/// The layers every listener's requests pass through.
fn layered(routes: Router<AppState>, state: AppState) -> Router {
    let metrics = state.metrics.clone();
    let request_id = HeaderName::from_static("x-request-id");
    routes
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(state.clone(), time_and_bound))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(bound_head))
        .layer(CatchPanicLayer::custom(|_| ApiError::Internal.into_response()))
        .layer(middleware::from_fn_with_state(state.clone(), shed_load))
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
        .layer(middleware::map_request(drop_bad_request_id))
        // Outermost, so whatever a request records lands in this app's metrics.
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            metrics.scope(next.run(req))
        }))
        .with_state(state)
}

/// Removes a caller's `x-request-id` that is not a short token, so
/// `SetRequestIdLayer` gives the request a fresh one.
async fn drop_bad_request_id(mut req: Request) -> Request {
    let acceptable = |value: &axum::http::HeaderValue| {
        let bytes = value.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= MAX_REQUEST_ID_CHARS
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    let headers = req.headers_mut();
    let ids: Vec<_> = headers.get_all("x-request-id").iter().collect();
    if ids.len() != 1 || !ids.iter().all(|v| acceptable(v)) {
        headers.remove("x-request-id");
    }
    req
}

/// Refuses request heads over the limits above with problem+json.
async fn bound_head(req: Request, next: Next) -> Response {
    let uri = req.uri();
    let uri_bytes = uri.path_and_query().map_or(0, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if uri_bytes > MAX_URI_BYTES {
        return ApiError::UriTooLong.into_response();
    }
    let headers = req.headers();
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > MAX_HEADER_COUNT || header_bytes > MAX_HEADER_BYTES {
        return ApiError::HeaderFieldsTooLarge.into_response();
    }
    next.run(req).await
}

/// Answers 503 at once when `DROPGATE_MAX_IN_FLIGHT` requests are being
/// handled already. Nothing of a shed request has happened: it is refused
/// before authentication, parsing or any store.
async fn shed_load(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if UNLIMITED_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    match state.requests.in_flight.try_acquire() {
        Ok(_permit) => next.run(req).await,
        Err(_) => {
            metrics::counter!(crate::telemetry::metric::REQUESTS_SHED_TOTAL).increment(1);
            ApiError::Overloaded.into_response()
        }
    }
}

/// Bounds every request by its deadline and records its latency.
async fn time_and_bound(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    // The dashboard bounds each of its store reads itself and shows a store
    // that does not answer as unreachable: it gets the time to say so.
    let deadline = if req.uri().path() == "/v1/dashboard" {
        state.requests.deadline.max(DASHBOARD_DEADLINE)
    } else {
        state.requests.deadline
    };
    let response = match tokio::time::timeout(deadline, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable {
            dependency: "dropgate",
            retry_after_s: 1,
        }
        .into_response(),
    };
    metrics::histogram!(
        metric::HTTP_REQUEST_DURATION_SECONDS,
        "method" => method.to_string(),
        "route" => route,
        "status" => response.status().as_u16().to_string()
    )
    .record(started.elapsed().as_secs_f64());
    response
}
