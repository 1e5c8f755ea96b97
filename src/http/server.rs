//! The HTTP/1.1 server loop: accepts connections up to a cap below the
//! process's descriptor limit, and closes connections that are slow to send
//! their requests or sit idle, so that no client can hold the server's
//! connections (slowloris) and lock everyone else out. At the cap, answers
//! close their connection (`Connection: close`), so busy keep-alive clients
//! (a crowd of dashboard viewers polling every second) take turns with the
//! connections waiting in the backlog instead of starving them.
//!
//! `axum::serve` has no such knobs, so this is hyper's connection builder
//! driven directly, with the router as its service.

use axum::Router;
use axum::http::{HeaderValue, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Descriptors kept out of the connection cap: store connections (Postgres
/// pool, Redis connections, the worker's pool), the listeners, log and
/// runtime files.
pub const DESCRIPTOR_RESERVE: u64 = 128;

/// The fewest connections the cap allows, whatever the descriptor limit.
const MIN_CONNECTIONS: usize = 16;

/// hyper refuses more header fields than this with a bodiless 431; it is
/// above `MAX_HEADER_COUNT`, so the problem+json 431 answers first.
const HYPER_MAX_HEADERS: usize = 2 * super::MAX_HEADER_COUNT;

/// How connections are bounded.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A new connection must send its first complete request head within
    /// this long, or it is closed.
    pub header_timeout: Duration,
    /// After a response, the next request head must be complete within this
    /// long (idle keep-alive time included), or the connection is closed.
    pub idle_timeout: Duration,
    /// Open connections at most; at the cap, new ones wait in the listen
    /// backlog until one closes.
    pub max_connections: usize,
}

/// The connection cap: `configured` if given, but never within
/// `DESCRIPTOR_RESERVE` of the descriptor limit `nofile`.
pub fn connection_cap(configured: Option<usize>, nofile: u64) -> usize {
    let room = usize::try_from(nofile.saturating_sub(DESCRIPTOR_RESERVE)).unwrap_or(usize::MAX);
    configured.unwrap_or(room).min(room).max(MIN_CONNECTIONS)
}

/// The process's soft limit of open descriptors, if the platform tells.
pub fn descriptor_limit() -> Option<u64> {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .ok()
        .map(|(soft, _hard)| soft)
}

/// Serves `router` on `listener` until `shutdown` completes, then lets open
/// connections finish their requests (idle ones close at once) and returns
/// once all are closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    metrics: crate::telemetry::Metrics,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        .max_headers(HYPER_MAX_HEADERS);
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut warned_at_cap = false;
    loop {
        if open.available_permits() == 0 && !warned_at_cap {
            tracing::warn!(
                max_connections = limits.max_connections,
                "at the HTTP connection cap: new connections wait until one closes"
            );
        }
        warned_at_cap = open.available_permits() == 0;
        let permit = tokio::select! {
            permit = open.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors despite the cap (other files), or a
                    // connection reset before it was accepted: back off a
                    // little rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Answers are small; do not hold them back for more to send.
        let _ = stream.set_nodelay(true);

        let first_head = Arc::new(AtomicBool::new(false));
        let service = {
            let (router, first_head, open) = (router.clone(), first_head.clone(), open.clone());
            hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                first_head.store(true, Ordering::Relaxed);
                let (answer, open) = (router.clone().oneshot(request), open.clone());
                async move {
                    let mut response = answer.await?;
                    if open.available_permits() == 0 {
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    Ok::<_, std::convert::Infallible>(response)
                }
            })
        };
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        let header_timeout = limits.header_timeout;
        // What the connection records (a slow one cut) is the app's.
        tokio::spawn(metrics.scope(async move {
            let _permit = permit;
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => return log_closed(result),
                () = tokio::time::sleep(header_timeout) => {}
            }
            if !first_head.load(Ordering::Relaxed) {
                metrics::counter!(crate::telemetry::metric::HTTP_SLOW_CONNECTIONS_CLOSED_TOTAL)
                    .increment(1);
                return; // dropped: the socket closes
            }
            log_closed(connection.await);
        }));
    }
    drop(listener);
    graceful.shutdown().await;
}

fn log_closed(result: Result<(), hyper::Error>) {
    if let Err(error) = result {
        // Clients hanging up, timing out or sending garbage: routine.
        tracing::debug!(%error, "connection closed with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_stays_below_the_descriptor_limit() {
        assert_eq!(connection_cap(None, 1024), 1024 - 128);
        assert_eq!(connection_cap(Some(100), 1024), 100);
        assert_eq!(connection_cap(Some(5000), 1024), 1024 - 128);
        assert_eq!(connection_cap(None, 100), MIN_CONNECTIONS);
        assert_eq!(connection_cap(None, u64::MAX), usize::MAX - 128);
    }
}
