//! Builds the application from configuration: stores, gate, HTTP router and
//! the background services, then runs them until asked to stop.

use crate::app::Dropgate;
use crate::config::ServeConfig;
use crate::gate::Gate;
use crate::http::{self, AppState, Tokens};
use crate::ledger::{self, Ledger};
use crate::limits::RateLimits;
use crate::reaper::Reaper;
use crate::telemetry::{Metrics, metric};
use crate::worker::Worker;
use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// In-flight requests get this long to finish after a stop signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

pub struct Application {
    listener: TcpListener,
    /// `DROPGATE_OPS_LISTEN`: dashboard, metrics and probes, apart.
    ops_listener: Option<TcpListener>,
    state: AppState,
    config: ServeConfig,
}

impl Application {
    /// Migrates the ledger, opens the gate and binds the listener. Records
    /// into the process's metrics.
    pub async fn build(config: ServeConfig) -> anyhow::Result<Self> {
        Self::build_with_metrics(config, Metrics::process()).await
    }

    /// [`build`](Self::build), recording into `metrics` (a test's own).
    pub async fn build_with_metrics(config: ServeConfig, metrics: Metrics) -> anyhow::Result<Self> {
        // In the scope from the start, so what start-up does (a gate
        // rebuild) counts.
        let app = metrics
            .scope(async {
                let app = connect(&config.stores)
                    .await?
                    .with_replica_wait(config.redis_wait_replicas, config.redis_wait_timeout_ms)
                    .with_sold_out_cache(Duration::from_millis(config.sold_out_cache_ms))
                    .with_admit_batch_max(config.admit_batch_max)
                    .with_admission(config.admission);
                if let Err(error) = crate::rebuild::ensure_gate(&app).await {
                    // Not fatal: the server answers 503 and the next request or the
                    // reconciler builds the gate once Redis is back.
                    tracing::warn!(%error, "gate not built at start-up");
                }
                metrics::gauge!(metric::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"))
                    .set(1.0);
                anyhow::Ok(app)
            })
            .await?;
        let state = AppState {
            app,
            tokens: Arc::new(Tokens {
                admin: config.admin_token.clone(),
                storefront: config.storefront_tokens.clone(),
            }),
            limits: Arc::new(RateLimits::new(config.customer_rps, config.global_rps)),
            metrics,
            draining: Arc::default(),
            requests: Arc::new(http::RequestLimits::new(
                config.stores.store_timeout() * 2,
                config.max_in_flight as usize,
            )),
            dashboard: Arc::new(http::DashboardCache::new(Duration::from_millis(
                config.dashboard_interval_ms,
            ))),
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("DROPGATE_LISTEN: cannot listen on {}", config.listen))?;
        let ops_listener = match config.ops_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("DROPGATE_OPS_LISTEN: cannot listen on {addr}"))?,
            ),
            None => None,
        };
        Ok(Self {
            listener,
            ops_listener,
            state,
            config,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn app(&self) -> &Dropgate {
        &self.state.app
    }

    /// Serves until `shutdown` completes, then drains: in-flight requests
    /// finish (bounded), background services stop after their current step.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let limits = self.connection_limits();
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut background: Vec<JoinHandle<()>> = Vec::new();
        // Each service records into this application's metrics.
        let metrics = self.state.metrics.clone();
        // The activity hints of this process's requests, for every
        // process's background services.
        let gate = self.state.app.gate.clone();
        let stop = stop_rx.clone();
        background.push(tokio::spawn(metrics.scope(async move {
            gate.publish_activity_until(stop).await;
        })));
        // Units coming back clear this gatekeeper's sold-out flags.
        let gate = self.state.app.gate.clone();
        let stop = stop_rx.clone();
        background.push(tokio::spawn(metrics.scope(async move {
            gate.follow_units_back_until(stop).await;
        })));
        if !self.config.no_worker {
            let worker = Worker::new(self.state.app.clone(), self.config.worker)?;
            background.push(tokio::spawn(metrics.scope(worker.run(stop_rx.clone()))));
        }
        if !self.config.no_reaper {
            let reaper = Reaper::with_config(self.state.app.clone(), self.config.reaper.clone());
            background.push(tokio::spawn(metrics.scope(reaper.run(stop_rx.clone()))));
        }
        // With Postgres deciding admissions there is no gate to reconcile.
        let postgres_only = self.config.admission == crate::app::AdmissionMode::Postgres;
        if !self.config.no_reconciler && !postgres_only {
            let reconciler = crate::reconciler::Reconciler::with_config(
                self.state.app.clone(),
                self.config.reconciler.clone(),
            );
            background.push(tokio::spawn(metrics.scope(reconciler.run(stop_rx.clone()))));
        }
        background.push(tokio::spawn(forget_idle_customers(
            self.state.limits.clone(),
            stop_rx.clone(),
        )));

        let draining = self.state.draining.clone();
        let (router, ops) = match self.ops_listener {
            Some(listener) => (
                http::public_router(self.state.clone()),
                Some((listener, http::ops_router(self.state))),
            ),
            None => (http::router(self.state), None),
        };
        // Set once the stop signal came and the delay passed: both listeners
        // stop accepting and drain.
        let (closing_tx, mut closing) = watch::channel(false);
        let delay = Duration::from_millis(self.config.shutdown_delay_ms);
        let graceful = async move {
            shutdown.await;
            // Not ready any more, but still serving, so a load balancer can
            // stop sending before the listener closes: connections that
            // arrive after it closes would be refused or reset.
            draining.store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                "stopping: not ready, still serving"
            );
            tokio::time::sleep(delay).await;
            tracing::info!("stopping: no new connections; draining in-flight requests");
            let _ = closing_tx.send(true);
        };
        let closed = |mut closing: watch::Receiver<bool>| async move {
            let _ = closing.wait_for(|closing| *closing).await;
        };
        let ops_server = ops.map(|(listener, router)| {
            let limits = http::ConnectionLimits {
                max_connections: OPS_MAX_CONNECTIONS,
                ..limits
            };
            http::serve(
                listener,
                router,
                limits,
                metrics.clone(),
                closed(closing.clone()),
            )
        });
        let public = http::serve(
            self.listener,
            router,
            limits,
            metrics.clone(),
            closed(closing.clone()),
        );
        let serving = tokio::spawn(async move {
            tokio::join!(public, async {
                if let Some(ops) = ops_server {
                    ops.await;
                }
            });
        });
        tokio::spawn(graceful);
        let server = async move {
            // Once the stop signal came, give in-flight requests a bounded time.
            let _ = closing.wait_for(|closing| *closing).await;
            match tokio::time::timeout(SHUTDOWN_GRACE, serving).await {
                Ok(joined) => joined.map_err(anyhow::Error::from),
                Err(_) => {
                    tracing::warn!("in-flight requests did not finish in time");
                    Ok(())
                }
            }
        };
        let result = server.await;
        let _ = stop_tx.send(true);
        for task in background {
            let _ = task.await;
        }
        tracing::info!("stopped");
        result
    }
}

impl Application {
    /// The connection bounds, the cap kept below the descriptor limit; says
    /// so in one log line, as running out of descriptors would lock out
    /// every client.
    fn connection_limits(&self) -> http::ConnectionLimits {
        let configured = self.config.max_connections.map(|n| n as usize);
        let max_connections = match http::descriptor_limit() {
            Some(nofile) => {
                let cap = http::connection_cap(configured, nofile);
                if configured.is_some_and(|n| n > cap) {
                    tracing::warn!(
                        max_connections = cap,
                        descriptor_limit = nofile,
                        "DROPGATE_MAX_CONNECTIONS lowered to stay below the descriptor limit"
                    );
                }
                tracing::info!(
                    max_connections = cap,
                    descriptor_limit = nofile,
                    "HTTP connections capped at {cap}: descriptor limit {nofile} less {} kept for stores and files",
                    http::DESCRIPTOR_RESERVE
                );
                cap
            }
            None => {
                let cap = configured.unwrap_or(DEFAULT_MAX_CONNECTIONS);
                tracing::info!(
                    max_connections = cap,
                    "HTTP connections capped at {cap} (descriptor limit unknown)"
                );
                cap
            }
        };
        http::ConnectionLimits {
            header_timeout: Duration::from_millis(self.config.header_timeout_ms),
            idle_timeout: Duration::from_millis(self.config.idle_timeout_ms),
            max_connections,
        }
    }
}

/// Connections of the operations listener at most: a few operators and a
/// scraper, kept within the descriptors `DESCRIPTOR_RESERVE` sets aside.
const OPS_MAX_CONNECTIONS: usize = 32;

/// The connection cap where the descriptor limit cannot be read.
const DEFAULT_MAX_CONNECTIONS: usize = 1024;

async fn forget_idle_customers(limits: Arc<RateLimits>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = tick.tick() => limits.forget_idle(),
            _ = stop.changed() => return,
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

/// Migrates the ledger and connects both stores, for the commands that
/// run without the HTTP server.
pub async fn connect(stores: &crate::config::StoreConfig) -> anyhow::Result<Dropgate> {
    migrate(stores).await?;
    let ledger = Ledger::connect(&stores.database_url, stores.store_timeout())?;
    let gate = Gate::connect(
        &stores.redis_url,
        &stores.key_prefix,
        stores.store_timeout(),
    )?;
    Ok(Dropgate::open(gate, ledger).await?)
}

/// `dropgate migrate`: creates the ledger's database if missing and applies
/// the migrations.
pub async fn migrate(stores: &crate::config::StoreConfig) -> anyhow::Result<()> {
    ledger::migrate(&stores.database_url, stores.store_timeout())
        .await
        .context("DATABASE_URL: cannot migrate the ledger")
}

/// `dropgate reconcile`: only the reconciler, until `shutdown`.
pub async fn run_reconciler(
    stores: crate::config::StoreConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let reconciler = crate::reconciler::Reconciler::new(connect(&stores).await?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let running = tokio::spawn(reconciler.run(stop_rx));
    shutdown.await;
    let _ = stop_tx.send(true);
    running.await?;
    Ok(())
}

/// `dropgate worker`: only the commit worker, until `shutdown`.
pub async fn run_worker(
    stores: crate::config::StoreConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let worker = Worker::new(connect(&stores).await?, crate::worker::Config::default())?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let running = tokio::spawn(worker.run(stop_rx));
    shutdown.await;
    let _ = stop_tx.send(true);
    running.await?;
    Ok(())
}
